// pack / unpack: pure bit shuffling, one row's stream at a time (each packed word written once).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cat/ops.h"
#include "common.h"
#include "threadpool.h"

namespace cat::cpu {

PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int64_t row_words,
                int32_t* packed) {
  PackStatus st;
  const uint8_t* c8 = static_cast<const uint8_t*>(codes);
  const int32_t* c32 = static_cast<const int32_t*>(codes);
  const int64_t limit = int64_t{1} << bits;
  // Validate first (the status must name the first bad code in row-major order, which a
  // parallel pass could not cheaply guarantee); this loop is a fraction of the packing cost.
  if (code_bytes == 1 && bits == 8) {
    // every uint8 is a valid 8-bit code
  } else {
    for (int64_t i = 0, total = n * k; i < total; ++i) {
      const int64_t v = code_bytes == 1 ? int64_t{c8[i]} : int64_t{c32[i]};
      if (v < 0 || v >= limit) {
        st.ok = false;
        st.row = i / k;
        st.col = i % k;
        st.value = v;
        return st;
      }
    }
  }
  const int64_t tiles = ceil_div(n, kTileN);
  parallel_for(tiles, [&](int64_t t) {
    std::vector<uint32_t> w(static_cast<size_t>(row_words));
    for (int r = 0; r < kTileN; ++r) {
      const int64_t row = t * kTileN + r;
      std::fill(w.begin(), w.end(), 0u);
      if (row < n) {
        // The row's stream: value v at bits [bits v, bits v + bits); a 3-bit value whose
        // position is 30 or 31 mod 32 straddles two words.
        for (int64_t v = 0; v < k; ++v) {
          const uint32_t q = code_bytes == 1 ? uint32_t{c8[row * k + v]} : static_cast<uint32_t>(c32[row * k + v]);
          const int64_t pos = int64_t{bits} * v, wi = pos >> 5;
          const int off = static_cast<int>(pos & 31);
          w[wi] |= q << off;
          if (off + bits > 32) w[wi + 1] |= q >> (32 - off);
        }
      }
      int32_t* out = packed + t * row_words * kTileN + r;
      for (int64_t i = 0; i < row_words; ++i) out[i * kTileN] = static_cast<int32_t>(w[i]);
    }
  });
  return st;
}

void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, int64_t row_words, uint8_t* codes) {
  const int64_t tiles = ceil_div(n, kTileN);
  parallel_for(tiles, [&](int64_t t) {
    const int rows = static_cast<int>(n - t * kTileN < kTileN ? n - t * kTileN : kTileN);
    for (int r = 0; r < rows; ++r) {
      uint8_t* dst = codes + (t * kTileN + r) * k;
      const int32_t* row = packed + t * row_words * kTileN + r;
      for (int64_t v = 0; v < k; ++v) dst[v] = static_cast<uint8_t>(detail::decode_stream(row, v, bits));
    }
  });
}

}  // namespace cat::cpu
