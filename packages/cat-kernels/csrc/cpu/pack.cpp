// pack / unpack: pure bit shuffling, done per (tile, block) so each packed word is written once.
#include <cstdint>

#include "cat/ops.h"
#include "common.h"
#include "threadpool.h"

namespace cat::cpu {

PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int32_t* packed) {
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
  const int64_t tiles = ceil_div(n, kTileN), nb = ceil_div(k, kBlockK);
  parallel_for(tiles, [&](int64_t t) {
    for (int64_t b = 0; b < nb; ++b) {
      int32_t* out = packed + (t * nb + b) * bits * kTileN;
      for (int r = 0; r < kTileN; ++r) {
        const int64_t row = t * kTileN + r;
        uint32_t q[32] = {0};
        if (row < n) {
          const int64_t base = row * k + b * 32;
          const int64_t kc = k - b * 32 < 32 ? k - b * 32 : 32;
          for (int64_t v = 0; v < kc; ++v)
            q[v] = code_bytes == 1 ? uint32_t{c8[base + v]} : static_cast<uint32_t>(c32[base + v]);
        }
        uint32_t w[8] = {0};
        if (bits == 3) {
          // One 96-bit little-endian stream, value v at stream bits [3v, 3v + 3).
          for (int v = 0; v < 32; ++v) {
            const int pos = 3 * v, wi = pos >> 5, off = pos & 31;
            w[wi] |= q[v] << off;
            if (off > 29) w[wi + 1] |= q[v] >> (32 - off);  // values 10 and 21 straddle
          }
        } else {
          const int f = 32 / bits;
          for (int v = 0; v < 32; ++v) w[v / f] |= q[v] << (bits * (v % f));
        }
        for (int i = 0; i < bits; ++i) out[i * kTileN + r] = static_cast<int32_t>(w[i]);
      }
    }
  });
  return st;
}

void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, uint8_t* codes) {
  const int64_t tiles = ceil_div(n, kTileN), nb = ceil_div(k, kBlockK);
  parallel_for(tiles, [&](int64_t t) {
    const int rows = static_cast<int>(n - t * kTileN < kTileN ? n - t * kTileN : kTileN);
    for (int r = 0; r < rows; ++r) {
      uint8_t* dst = codes + (t * kTileN + r) * k;
      for (int64_t b = 0; b < nb; ++b) {
        const int32_t* words = packed + (t * nb + b) * bits * kTileN + r;
        const int64_t kc = k - b * 32 < 32 ? k - b * 32 : 32;
        for (int64_t v = 0; v < kc; ++v)
          dst[b * 32 + v] = static_cast<uint8_t>(detail::decode_code(words, static_cast<int>(v), bits));
      }
    }
  });
}

}  // namespace cat::cpu
