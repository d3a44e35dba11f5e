// The gemm / dequantize kernels, written once against a small vector interface `O` and
// instantiated by kernels_{scalar,avx2,avx512}.cpp, each compiled with its own ISA flags.
// This file is included INSIDE an anonymous namespace of those files (internal linkage, so the
// three instantiations can never be merged by the linker); it includes nothing itself.
//
// O provides: VI/VF (16 int32 / float32 lanes, one lane per row of a tile), Mask, kMB (rows of
// x per register block), kUnrollValues (unroll the 32 values of a block), load/loadf/storef/zero/set1/set1i/bcast/fma/add/sub/mul/cvt,
// shift<S> (S > 0: logical right, S < 0: left), srl/sll (runtime count), and_/or_,
// mant(w, mask, one) = bitcast<float>((w & mask) | one), h2f(h) (one float16 as float),
// kChains1 (accumulator chains at one row of x), kScalesT (with scales_t: vector scale gather,
// see gather_scales), kPermDecode (with perm_lo / perm_hi: paired table decode) and kPerm8Decode
// (with perm_lo on 8 entries: 2/3-bit table decode); see Decoder.

#define CAT_AI inline __attribute__((always_inline))
#define CAT_AIL __attribute__((always_inline))  // for lambdas
#define CAT_CV(ic) decltype(ic)::value

template <class F, int... I>
CAT_AI void unroll_seq(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
CAT_AI void unroll(F&& f) {
  unroll_seq(f, std::make_integer_sequence<int, N>{});
}

// Decoding trick: a code q of p bits placed in the top p mantissa bits of 1.0f is the float
// 1 + q / 2^p, so one shift and one and/or turn a word into 16 floats (no int->float convert).
// The kernel therefore accumulates acc = sum x * (1 + q / 2^p) = xs + sum(x q) / 2^p and
// recovers sum(x q) = C * (acc - xs) per segment, with xs = sum x over the segment, C = 2^p.
// 3-bit codes live in one 96-bit stream per block (docs/format.md); the two that straddle two
// words (values 10 and 21) take one extra shift and or.
template <int BITS>
constexpr float kDecodeScale = static_cast<float>(1 << BITS);

// Value V (0..31) of the block at wp (word w of the 16 rows at wp + 16 w) as 16 floats
// 1 + q / 2^BITS. Repeated loads of one word are left to the compiler (CSE or a folded memory
// operand, whichever it prefers under register pressure).
template <class O, int BITS, int V>
CAT_AI typename O::VF decode_value(const int32_t* wp, typename O::VI mask, typename O::VI one) {
  constexpr int kPos = BITS * V, kWord = kPos / 32, kOff = kPos % 32, kTop = 23 - BITS;
  auto w = O::template shift<kOff - kTop>(O::load(wp + kWord * 16));
  if constexpr (kOff + BITS > 32) {  // straddles: high bits at the bottom of the next word
    w = O::or_(w, O::template shift<-(32 - kOff + kTop)>(O::load(wp + (kWord + 1) * 16)));
  }
  return O::mant(w, mask, one);
}

// Table decode (O::kPermDecode, AVX-512): a lane permute indexes a 16-float table with bits 0-3
// of each lane (vpermps), and a 16-bit permute indexes a 32-entry table of upper float halves
// with bits 16-20 (vpermw, lower halves zeroed). One shifted word thus serves two values: the
// one whose code sits at bit A (0 for 2/4 bits, 1 for 3 bits) and the one 16 - A bits above it,
// i.e. 1.5 instead of 2 decode instructions per value (plus a shift on one port instead of
// a shift and a ternary-logic op on two). The tables hold exactly 1 + q / 2^BITS, so the
// values, and the results, are those of decode_value. Straddling 3-bit values and 8-bit
// codes use decode_value.
// Decoder kinds: 0 = decode_value (shift and and/or), 1 = 8-entry lane permute (AVX2 vpermps,
// index bits 0-2: 2/3-bit codes), 2 = the paired 16/32-entry table decode (AVX-512).
template <class O, int BITS>
constexpr int kDecodeKind = O::kPermDecode && (BITS == 2 || BITS == 3 || BITS == 4) ? 2
                            : O::kPerm8Decode && (BITS == 2 || BITS == 3)          ? 1
                                                                                   : 0;

template <class O, int BITS, int KIND = kDecodeKind<O, BITS>>
struct Decoder {
  typename O::VI mask, one;
  CAT_AI Decoder() : mask(O::set1i(((1 << BITS) - 1) << (23 - BITS))), one(O::set1i(0x3F800000)) {}
  template <int V>
  CAT_AI typename O::VF value(const int32_t* wp) const {
    return decode_value<O, BITS, V>(wp, mask, one);
  }
};

// AVX2: vpermps with bits 0-2 of each lane as the index, so a 2/3-bit value costs a shift
// (none at bit 0) and one permute instead of a shift, an and and an or.
template <class O, int BITS>
struct Decoder<O, BITS, 1> {
  typename O::VI mask, one;
  typename O::VF lo;  // lo[i] = 1 + (i & (2^BITS - 1)) / 2^BITS, i = 0..7
  CAT_AI Decoder() : mask(O::set1i(((1 << BITS) - 1) << (23 - BITS))), one(O::set1i(0x3F800000)) {
    alignas(64) float t[16];
    for (int i = 0; i < 16; ++i)
      t[i] = 1.0f + static_cast<float>(i & ((1 << BITS) - 1)) / static_cast<float>(1 << BITS);
    lo = O::loadf(t);
  }
  template <int V>
  CAT_AI typename O::VF value(const int32_t* wp) const {
    constexpr int kPos = BITS * V, kWord = kPos / 32, kOff = kPos % 32;
    if constexpr (kOff + BITS > 32) {
      return decode_value<O, BITS, V>(wp, mask, one);
    } else {
      return O::perm_lo(O::template shift<kOff>(O::load(wp + kWord * 16)), lo);
    }
  }
};

template <class O, int BITS>
struct Decoder<O, BITS, 2> {
  static constexpr int kA = BITS == 3 ? 1 : 0;  // bit of the low code in its table index
  typename O::VI mask, one;
  typename O::VF lo;  // lo[i] = 1 + ((i >> kA) & (2^BITS - 1)) / 2^BITS
  typename O::VI hi;  // 16-bit words: hi[i] = upper half of 1 + (i & (2^BITS - 1)) / 2^BITS
  CAT_AI Decoder() : mask(O::set1i(((1 << BITS) - 1) << (23 - BITS))), one(O::set1i(0x3F800000)) {
    alignas(64) float t[16];
    alignas(64) uint16_t h[32];
    for (int i = 0; i < 16; ++i)
      t[i] = 1.0f + static_cast<float>((i >> kA) & ((1 << BITS) - 1)) / static_cast<float>(1 << BITS);
    for (int i = 0; i < 32; ++i) {
      const float f = 1.0f + static_cast<float>(i & ((1 << BITS) - 1)) / static_cast<float>(1 << BITS);
      h[i] = static_cast<uint16_t>(f32_to_bits(f) >> 16);  // exact: the low half is zero
    }
    lo = O::loadf(t);
    hi = O::load(reinterpret_cast<const int32_t*>(h));
  }
  template <int V>
  CAT_AI typename O::VF value(const int32_t* wp) const {
    constexpr int kPos = BITS * V, kWord = kPos / 32, kOff = kPos % 32;
    if constexpr (kOff + BITS > 32) {
      return decode_value<O, BITS, V>(wp, mask, one);
    } else if constexpr (kOff + kA < 16) {
      return O::perm_lo(O::template shift<kOff - kA>(O::load(wp + kWord * 16)), lo);
    } else {
      return O::perm_hi(O::template shift<kOff - 16>(O::load(wp + kWord * 16)), hi);
    }
  }
};

// The same with a runtime v, for the portable path (O::kUnrollValues == false), where fully
// unrolling 32 values of 16-lane array code costs far more compile time than it saves.
template <class O, int BITS>
CAT_AI typename O::VF decode_value_rt(const int32_t* wp, int v, typename O::VI mask,
                                      typename O::VI one) {
  constexpr int kTop = 23 - BITS;
  const int pos = BITS * v, wi = pos >> 5, off = pos & 31;
  typename O::VI w = O::load(wp + wi * 16);
  w = off >= kTop ? O::srl(w, off - kTop) : O::sll(w, kTop - off);
  if (off + BITS > 32) w = O::or_(w, O::sll(O::load(wp + (wi + 1) * 16), 32 - off + kTop));
  return O::mant(w, mask, one);
}

// 16 zero points (one per row of tile t) of group g, as integers (2^(BITS-1) without stored ones).
template <class O, int BITS>
CAT_AI typename O::VI zero_codes(const GemmPlan& p, int64_t t, int64_t g) {
  if (!p.w.zeros) return O::set1i(1 << (BITS - 1));
  // One word (two when a 3-bit zero straddles) holds group g of all 16 rows of the tile.
  const int64_t pos = int64_t{BITS} * g;
  const int32_t* zw = p.w.zeros + (t * p.zw + (pos >> 5)) * 16;
  const int off = static_cast<int>(pos & 31);
  typename O::VI z = O::srl(O::load(zw), off);
  if (off + BITS > 32) z = O::or_(z, O::sll(O::load(zw + 16), 32 - off));
  return O::and_(z, O::set1i((1 << BITS) - 1));
}

// The same as floats, plus the decode constant: C + z, exact in float.
template <class O, int BITS>
CAT_AI typename O::VF zero_offsets(const GemmPlan& p, int64_t t, int64_t g) {
  return O::add(O::cvt(zero_codes<O, BITS>(p, t, g)), O::set1(kDecodeScale<BITS>));
}

// Blocks ahead of the current one that run_segments prefetches at one row of x (2 KB at 4 bits).
// 4, 16 and 32 were tried beside 8 on SPR (8192x2048 4-bit, 2 threads: 18.0, 17.2, 17.0 GB/s
// against 18.4-18.8; unlogged trial builds). Past the end of a tile the hint touches the next
// tile's words or nothing: prefetches never fault.
constexpr int kPrefetchBlocks = 8;

// The segments [0, nseg) of one work item for MB rows of x (one row block). For every segment:
// accumulate its blocks, then fold y[m] += s * (C * acc - (C + z) * xs) into y (16 rows each).
// x is the row block's interleaved copy: x[col * MB + m] is column col of row m, so every
// broadcast is a constant offset from one pointer (no per-row address registers).
// sc / zc: per group (from the group of the first segment on), the 16 scales and the 16 (C + z)
// values. xs[m * xs_stride + i]: the
// sum of row m of x over segment i.
template <class O, int BITS, int MB>
__attribute__((noinline)) void run_segments(const int32_t* tile_words, const Segment* segs, int nseg,
                                            const float* sc, const float* zc, const float* x,
                                            const float* xs, int64_t xs_stride, float* y) {
  const int g_lo = segs[0].g;
  // Independent accumulator chains: with one row of x an FMA chain would be latency-bound.
  constexpr int U = MB >= 4 ? 1 : (MB >= 2 ? 2 : O::kChains1);
  using VF = typename O::VF;
  using VI = typename O::VI;
  const VI mask = O::set1i(((1 << BITS) - 1) << (23 - BITS));
  const VI one = O::set1i(0x3F800000);
  const Decoder<O, BITS> dec;
  const VF cvec = O::set1(kDecodeScale<BITS>);
  for (int i = 0; i < nseg; ++i) {
    const Segment seg = segs[i];
    const int32_t* wp = tile_words + static_cast<int64_t>(seg.b0) * BITS * 16;
    const float* xb = x + static_cast<int64_t>(seg.b0) * 32 * MB;
    VF acc[MB][U];
    unroll<MB>([&](auto mi) CAT_AIL {
      unroll<U>([&](auto u) CAT_AIL { acc[CAT_CV(mi)][CAT_CV(u)] = O::zero(); });
    });
    for (int blk = seg.b0; blk < seg.b1; ++blk, wp += BITS * 16, xb += 32 * MB) {
      if constexpr (MB == 1) {
        // One row of x reads every weight once: the loop is as much a memory stream as
        // arithmetic, and the hardware prefetchers alone leave it waiting (they stop at page
        // boundaries, and a thread's tiles are 4-64 KB apart). Ask for the block
        // kPrefetchBlocks ahead (its BITS lines), into all cache levels. SPR, 2 threads, weights
        // streamed from DRAM (benchmarks/probes/gemv_stream.py; logs before and after in
        // benchmarks/results/decode_2026-12-07/session18/): 8192x2048 4-bit 9.8 -> 17.1 GB/s,
        // 2048x8192 13.1 -> 19.2, 8192x2048 3-bit 8.2 -> 16.8. A non-temporal hint (locality 0)
        // made a decode step slower.
        unroll<BITS>([&](auto li) CAT_AIL {
          __builtin_prefetch(wp + (kPrefetchBlocks * BITS + CAT_CV(li)) * 16, 0, 3);
        });
      }
      if constexpr (O::kUnrollValues) {
        unroll<32>([&](auto vi) CAT_AIL {
          constexpr int v = CAT_CV(vi);
          const VF c = dec.template value<v>(wp);
          unroll<MB>([&](auto mi) CAT_AIL {
            constexpr int m = CAT_CV(mi);
            acc[m][v % U] = O::fma(O::bcast(xb + v * MB + m), c, acc[m][v % U]);
          });
        });
      } else {
        for (int v0 = 0; v0 < 32; v0 += U) {
          unroll<U>([&](auto ui) CAT_AIL {
            constexpr int u = CAT_CV(ui);
            const VF c = decode_value_rt<O, BITS>(wp, v0 + u, mask, one);
            unroll<MB>([&](auto mi) CAT_AIL {
              constexpr int m = CAT_CV(mi);
              acc[m][u] = O::fma(O::bcast(xb + (v0 + u) * MB + m), c, acc[m][u]);
            });
          });
        }
      }
    }
    const VF scv = O::loadf(sc + (seg.g - g_lo) * 16);
    const VF zcv = O::loadf(zc + (seg.g - g_lo) * 16);
    unroll<MB>([&](auto mi) CAT_AIL {
      constexpr int m = CAT_CV(mi);
      VF a = acc[m][0];
      unroll<U - 1>([&](auto u) CAT_AIL { a = O::add(a, acc[m][CAT_CV(u) + 1]); });
      // y += s * (sum x q - z * sum x) = s * (C * acc - (C + z) * xs)
      const VF inner = O::sub(O::mul(a, cvec), O::mul(zcv, O::set1(xs[m * xs_stride + i])));
      O::storef(y + m * 16, O::fma(scv, inner, O::loadf(y + m * 16)));
    });
  }
}

// Row blocks are powers of two (kMB, kMB/2, ..., 1): a remainder of 7 rows runs as 4 + 2 + 1.
// Calls f(std::integral_constant<int, B>{}) with the block size B for mr (< 2 MB) rows.
template <int MB, class F>
CAT_AI void with_row_block(int mr, F&& f) {
  if constexpr (MB > 1) {
    if (mr < MB) return with_row_block<MB / 2>(mr, f);
  }
  f(std::integral_constant<int, MB>{});
}

// Scales of the 16 rows of tile t for groups [g0, g0 + ngc) into sc[gi * 16 + r], with the
// dtype switch outside the loops (padded rows get 0, so they contribute nothing). Ops with a
// vector transpose (O::kScalesT) convert 16 contiguous groups of a row at once.
template <class O, DType DT>
CAT_AI void gather_scales_t(const GemmPlan& p, int64_t t, int rows, int64_t g0, int ngc, float* sc) {
  for (int r = 0; r < rows; ++r) {
    const int64_t base = (t * 16 + r) * p.ng + g0;
    for (int i = 0; i < ngc; ++i) {
      const int64_t j = base + i;
      if constexpr (DT == DType::f16) sc[i * 16 + r] = O::h2f(static_cast<const uint16_t*>(p.w.scales)[j]);
      else if constexpr (DT == DType::bf16) sc[i * 16 + r] = bf16_to_f32(static_cast<const uint16_t*>(p.w.scales)[j]);
      else sc[i * 16 + r] = static_cast<const float*>(p.w.scales)[j];
    }
  }
  for (int r = rows; r < 16; ++r)
    for (int i = 0; i < ngc; ++i) sc[i * 16 + r] = 0.0f;
}

template <class O>
void gather_scales(const GemmPlan& p, int64_t t, int rows, int64_t g0, int ngc, float* sc) {
  if constexpr (O::kScalesT) {
    O::scales_t(p.w.scales, p.w.scale_dtype, t * 16 * p.ng + g0, p.ng, rows, ngc, sc);
    return;
  }
  switch (p.w.scale_dtype) {
    case DType::f16: gather_scales_t<O, DType::f16>(p, t, rows, g0, ngc, sc); break;
    case DType::bf16: gather_scales_t<O, DType::bf16>(p, t, rows, g0, ngc, sc); break;
    default: gather_scales_t<O, DType::f32>(p, t, rows, g0, ngc, sc); break;
  }
}

// Scales and zero points of tile t into the caches. Items run in runs of consecutive tiles, so
// the next tile's are asked for while this one runs: the weights stream is prefetched
// block by block, but these small arrays lie elsewhere, and at one row of x their cache misses
// at the start of every tile cost about a quarter of the kernel's time (perf, SmolLM2 step).
// Prefetches never fault, so the tile past the last one needs no check.
CAT_AI void prefetch_tile_params(const GemmPlan& p, int64_t t) {
  const int64_t esize = p.w.scale_dtype == DType::f32 ? 4 : 2;
  const char* sc = static_cast<const char*>(p.w.scales) + t * 16 * p.ng * esize;
  for (int64_t b = 0; b < 16 * p.ng * esize; b += 64) __builtin_prefetch(sc + b, 0, 3);
  if (p.w.zeros) {
    const char* zw = reinterpret_cast<const char*>(p.w.zeros + t * p.zw * 16);
    for (int64_t b = 0; b < p.zw * 64; b += 64) __builtin_prefetch(zw + b, 0, 3);
  }
}

// One work item (tile t, split s, rows mbase .. mbase + m of x), shared by the float and the int8
// kernels: the split's segments in chunks spanning at most kChunk groups, whose 16 scales and
// zero points per group are prepared once and reused for every row block of x (kMB rows);
// run(mr, segs, nseg, sc, zc, c0, row, y) then runs segments c0 .. c0 + nseg for the mr rows
// from `row` into y. zc holds C + z (the float kernels' decode offset) or, kPlainZ, z.
template <class O, int BITS, int kMB, bool kPlainZ, class Run>
CAT_AI void item_chunks(const GemmPlan& p, int64_t t, int64_t s, int64_t mbase, int64_t m, float* part, Run&& run) {
  constexpr int kChunk = 64;
  const int rows = static_cast<int>(p.w.n - t * 16 < 16 ? p.w.n - t * 16 : 16);
  for (int64_t i = 0; i < m * 16; ++i) part[i] = 0.0f;
  prefetch_tile_params(p, t + 1);

  alignas(64) float sc[kChunk * 16];
  alignas(64) float zc[kChunk * 16];
  const int32_t seg_end = p.split_begin[s + 1];
  for (int32_t c0 = p.split_begin[s], nc = 0; c0 < seg_end; c0 += nc) {
    // A chunk: consecutive segments spanning at most kChunk groups (segments never go back
    // to an earlier group, and a group may span several segments).
    const int32_t g0 = p.segments[c0].g;
    nc = 1;
    while (c0 + nc < seg_end && p.segments[c0 + nc].g - g0 < kChunk) ++nc;
    const int ngc = p.segments[c0 + nc - 1].g - g0 + 1;
    // Scales of 16 rows are 16 strided loads: gather them once per chunk of groups, reading
    // each row's consecutive groups contiguously, and reuse them for every block of x rows.
    gather_scales<O>(p, t, rows, g0, ngc, sc);
    for (int i = 0; i < ngc; ++i) {
      if constexpr (kPlainZ) O::storef(zc + i * 16, O::cvt(zero_codes<O, BITS>(p, t, g0 + i)));
      else O::storef(zc + i * 16, zero_offsets<O, BITS>(p, t, g0 + i));  // C + z, exact in float
    }
    for (int64_t m0 = 0, mr = 0; m0 < m; m0 += mr) {
      mr = row_block(kMB, m - m0);
      run(static_cast<int>(mr), p.segments + c0, nc, sc, zc, c0, mbase + m0, part + m0 * 16);
    }
  }
}

template <class O, int BITS>
void gemm_item_bits(const GemmPlan& p, int64_t t, int64_t s, int64_t mbase, int64_t m, float* part) {
  const int32_t* tile_words = p.w.packed + t * p.nb * BITS * 16;
  item_chunks<O, BITS, O::kMB, false>(
      p, t, s, mbase, m, part,
      [&](int mr, const Segment* segs, int nseg, const float* sc, const float* zc, int32_t c0, int64_t row, float* y) {
        // Row block [row, row + mr) is stored interleaved: [kp][mr] at xf + row * kp.
        with_row_block<O::kMB>(mr, [&](auto b) {
          run_segments<O, BITS, CAT_CV(b)>(tile_words, segs, nseg, sc, zc, p.xf + row * p.kp,
                                           p.xs + row * p.n_segments + c0, p.n_segments, y);
        });
      });
}

// The segment loop of an int8 kernel (QWeight::int8_x): defined by each file that instantiates
// q8_item below (kernels_avx2.cpp, kernels_avx512_vnni.cpp), with its own instructions.
template <int BITS, int MB>
__attribute__((noinline)) void run_segments_q8(const int32_t* tile_words, const Segment* segs, int nseg,
                                               const float* sc, const float* zf, const int32_t* xq,
                                               const float* xd, const float* xs, int64_t xs_stride, float* y);

// The int8 kernels' work item: item_chunks over the plan's int8 x, each row block handed to
// run_segments_q8.
template <class O, int BITS, int kMB>
void q8_item_bits(const GemmPlan& p, int64_t t, int64_t s, int64_t mbase, int64_t m, float* part) {
  const int32_t* tile_words = p.w.packed + t * p.nb * BITS * 16;
  const int64_t kd = p.kp / 4;
  item_chunks<O, BITS, kMB, true>(
      p, t, s, mbase, m, part,
      [&](int mr, const Segment* segs, int nseg, const float* sc, const float* zf, int32_t c0, int64_t row, float* y) {
        with_row_block<kMB>(mr, [&](auto b) {
          run_segments_q8<BITS, CAT_CV(b)>(tile_words, segs, nseg, sc, zf, p.xq + row * kd, p.xd + row * p.nb,
                                           p.xs + row * p.n_segments + c0, p.n_segments, y);
        });
      });
}

// Q8Kernel::gemm_item for the widths in kBitsMask (bit b: b-bit weights; active_q8_kernel never
// hands this kernel another width).
template <class O, int kMB, unsigned kBitsMask>
void q8_item(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  switch (p.w.bits) {
    case 2: if constexpr (kBitsMask >> 2 & 1u) q8_item_bits<O, 2, kMB>(p, t, s, m0, mc, part); break;
    case 3: if constexpr (kBitsMask >> 3 & 1u) q8_item_bits<O, 3, kMB>(p, t, s, m0, mc, part); break;
    case 4: if constexpr (kBitsMask >> 4 & 1u) q8_item_bits<O, 4, kMB>(p, t, s, m0, mc, part); break;
    default: if constexpr (kBitsMask >> 8 & 1u) q8_item_bits<O, 8, kMB>(p, t, s, m0, mc, part); break;
  }
}

template <class O>
void gemm_item(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  switch (p.w.bits) {
    case 2: gemm_item_bits<O, 2>(p, t, s, m0, mc, part); break;
    case 3: gemm_item_bits<O, 3>(p, t, s, m0, mc, part); break;
    case 4: gemm_item_bits<O, 4>(p, t, s, m0, mc, part); break;
    default: gemm_item_bits<O, 8>(p, t, s, m0, mc, part); break;
  }
}

// Dequantization is a streaming pass (read 3-4 bits, write 16-32 bits per weight); plain loops
// that the compiler vectorizes with this file's ISA flags are enough to saturate memory.
template <int BITS, DType OUT>
void dequant_tile_t(const QWeight& w, int64_t t, void* out) {
  const int64_t nb = (w.k + 31) / 32, ng = w.n_groups(), zw = w.zero_words();
  const int rows = static_cast<int>(w.n - t * 16 < 16 ? w.n - t * 16 : 16);
  for (int r = 0; r < rows; ++r) {
    const int64_t row = t * 16 + r;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t g = (b * 32) / w.group_size;  // a block never straddles two groups
      const float s = load_as_f32(w.scales, w.scale_dtype, row * ng + g);
      const float z = static_cast<float>(zero_point(w.zeros, zw, t, g, r, BITS));
      const int32_t* words = w.packed + (t * nb + b) * BITS * 16 + r;
      uint32_t wd[BITS];
      for (int i = 0; i < BITS; ++i) wd[i] = static_cast<uint32_t>(words[i * 16]);
      float vals[32];
      for (int v = 0; v < 32; ++v) {
        uint32_t q;
        // Value v at bits [BITS v, BITS v + BITS) of the block's words read as one stream
        // (for 2, 4, 8 bits no value straddles; for 3 bits values 10 and 21 do).
        const int pos = BITS * v, wi = pos >> 5, off = pos & 31;
        q = wd[wi] >> off;
        if (off + BITS > 32) q |= wd[wi + 1] << (32 - off);
        q &= (1u << BITS) - 1u;
        vals[v] = (static_cast<float>(q) - z) * s;  // q - z is exact in float32
      }
      const int64_t kc = w.k - b * 32 < 32 ? w.k - b * 32 : 32;
      const int64_t o = row * w.k + b * 32;
      if constexpr (OUT == DType::f32) {
        float* dst = static_cast<float*>(out) + o;
        for (int64_t v = 0; v < kc; ++v) dst[v] = vals[v];
      } else {
        uint16_t* dst = static_cast<uint16_t*>(out) + o;
        for (int64_t v = 0; v < kc; ++v)
          dst[v] = OUT == DType::f16 ? f32_to_f16(vals[v]) : f32_to_bf16(vals[v]);
      }
    }
  }
}

template <int BITS>
void dequant_tile_bits(const QWeight& w, int64_t t, void* out, DType dt) {
  switch (dt) {
    case DType::f16: dequant_tile_t<BITS, DType::f16>(w, t, out); break;
    case DType::bf16: dequant_tile_t<BITS, DType::bf16>(w, t, out); break;
    default: dequant_tile_t<BITS, DType::f32>(w, t, out); break;
  }
}

void dequant_tile(const QWeight& w, int64_t t, void* out, DType dt) {
  switch (w.bits) {
    case 2: dequant_tile_bits<2>(w, t, out, dt); break;
    case 3: dequant_tile_bits<3>(w, t, out, dt); break;
    case 4: dequant_tile_bits<4>(w, t, out, dt); break;
    default: dequant_tile_bits<8>(w, t, out, dt); break;
  }
}

#undef CAT_CV
#undef CAT_AI
#undef CAT_AIL
