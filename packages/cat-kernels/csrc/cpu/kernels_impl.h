// The gemm / dequantize kernels, written once against a small vector interface `O` and
// instantiated by kernels_{scalar,avx2,avx512}.cpp, each compiled with its own ISA flags.
// This file is included INSIDE an anonymous namespace of those files (internal linkage, so the
// three instantiations can never be merged by the linker); it includes nothing itself.
//
// O provides: VI/VF (16 int32 / float32 lanes, one lane per row of a tile), Mask, kMB (rows of
// x per register block), load/loadf/storef/zero/set1/set1i/bcast/fma/add/sub/mul/cvt,
// shift<S> (S > 0: logical right, S < 0: left), srl/sll (runtime count), and_/or_,
// mant(w, mask, one) = bitcast<float>((w & mask) | one), bit<B>(w) (lanes whose bit B is set),
// mask_add(acc, mask, x) (acc + x in the selected lanes).

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
// recovers sum(x q) = C * (acc - xs) per segment, with xs = sum x over the segment.
// 3-bit codes: the low plane (2 bits) goes through the same trick (1 + lo/4) and the high plane
// (bit 2, weight 4 = 1 after the /4) is added as a masked add of x, so C = 4 as well.
template <int BITS>
constexpr float kDecodeScale = BITS == 3 ? 4.0f : static_cast<float>(1 << BITS);

// Accumulates one segment (nblk blocks) of one tile for MB rows of x, and writes
// acc[m] (the 16 per-row sums described above) to res[m * 16 .. +16].
// x is the row block's interleaved copy: x[v * MB + m] is column v of row m, so every
// broadcast is a constant offset from one pointer (no per-row address registers).
template <class O, int BITS, int MB>
CAT_AI void accumulate_segment(const int32_t* wp, int nblk, const float* x, float* res) {
  // Independent accumulator chains: with one row of x an FMA chain would be latency-bound.
  constexpr int U = MB >= 4 ? 1 : (MB >= 2 ? 2 : 4);
  constexpr int P = BITS == 3 ? 2 : BITS;  // bits of the plane decoded with the mantissa trick
  using VF = typename O::VF;
  using VI = typename O::VI;
  VF acc[MB][U];
  unroll<MB>([&](auto mi) CAT_AIL {
    unroll<U>([&](auto u) CAT_AIL { acc[CAT_CV(mi)][CAT_CV(u)] = O::zero(); });
  });
  const VI mask = O::set1i(((1 << P) - 1) << (23 - P));
  const VI one = O::set1i(0x3F800000);
  for (int blk = 0; blk < nblk; ++blk, wp += BITS * 16, x += 32 * MB) {
    constexpr int kWords = BITS == 3 ? 2 : BITS;
    constexpr int F = 32 / P;  // codes per word in the mantissa-decoded plane
    [[maybe_unused]] VI w2;
    if constexpr (BITS == 3) w2 = O::load(wp + 32);
    unroll<kWords>([&](auto wi) CAT_AIL {
      const VI w = O::load(wp + CAT_CV(wi) * 16);
      unroll<F>([&](auto ji) CAT_AIL {
        constexpr int j = CAT_CV(ji);
        constexpr int v = CAT_CV(wi) * F + j;
        const VF c = O::mant(O::template shift<P * j - (23 - P)>(w), mask, one);
        unroll<MB>([&](auto mi) CAT_AIL {
          constexpr int m = CAT_CV(mi);
          const VF xb = O::bcast(x + v * MB + m);
          acc[m][v % U] = O::fma(xb, c, acc[m][v % U]);
          if constexpr (BITS == 3) {
            // High bit of the same code (weight 4 -> 1 after the /4 of the low plane).
            acc[m][v % U] = O::mask_add(acc[m][v % U], O::template bit<v>(w2), xb);
          }
        });
      });
    });
  }
  unroll<MB>([&](auto mi) CAT_AIL {
    constexpr int m = CAT_CV(mi);
    VF s = acc[m][0];
    unroll<U - 1>([&](auto u) CAT_AIL { s = O::add(s, acc[m][CAT_CV(u) + 1]); });
    O::storef(res + m * 16, s);
  });
}

template <class O, int BITS, int MB>
__attribute__((noinline)) void accumulate_segment_ni(const int32_t* wp, int nblk, const float* x,
                                                     float* res) {
  accumulate_segment<O, BITS, MB>(wp, nblk, x, res);
}

// Row blocks are powers of two (kMB, kMB/2, ..., 1): a remainder of 7 rows runs as 4 + 2 + 1.
// Instantiating every size up to kMB would triple the compile time for no measurable gain.
template <class O, int BITS, int MB>
CAT_AI void accumulate_dispatch(int mr, const int32_t* wp, int nblk, const float* x, float* res) {
  if constexpr (MB > 1) {
    if (mr < MB) return accumulate_dispatch<O, BITS, MB / 2>(mr, wp, nblk, x, res);
  }
  accumulate_segment_ni<O, BITS, MB>(wp, nblk, x, res);
}


// 16 zero points (one per row of tile t) of group g, as floats, plus the decode constant.
template <class O, int BITS>
CAT_AI typename O::VF zero_offsets(const GemmPlan& p, int64_t t, int64_t g) {
  constexpr float C = kDecodeScale<BITS>;
  if (!p.w.zeros) return O::set1(C + static_cast<float>(1 << (BITS - 1)));
  const int32_t* zw = p.w.zeros + (t * p.nzb + (g >> 5)) * BITS * 16;
  const int v = static_cast<int>(g & 31);
  typename O::VI z;
  if constexpr (BITS == 3) {
    const auto lo = O::and_(O::srl(O::load(zw + (v >> 4) * 16), 2 * (v & 15)), O::set1i(3));
    const auto hi = O::and_(O::srl(O::load(zw + 32), v), O::set1i(1));
    z = O::or_(lo, O::sll(hi, 2));
  } else {
    constexpr int F = 32 / BITS;
    z = O::and_(O::srl(O::load(zw + (v / F) * 16), BITS * (v % F)), O::set1i((1 << BITS) - 1));
  }
  return O::add(O::cvt(z), O::set1(C));
}

template <class O, int BITS>
void gemm_item_bits(const GemmPlan& p, int64_t t, int64_t s, int64_t mbase, int64_t m, float* part) {
  constexpr int MB = O::kMB;
  constexpr int kChunk = 64;  // segments whose scales are gathered at once
  using VF = typename O::VF;
  const int rows = static_cast<int>(p.w.n - t * 16 < 16 ? p.w.n - t * 16 : 16);
  const int32_t* tile_words = p.w.packed + t * p.nb * BITS * 16;
  const VF cvec = O::set1(kDecodeScale<BITS>);
  for (int64_t i = 0; i < m * 16; ++i) part[i] = 0.0f;

  alignas(64) float sc[kChunk * 16];
  alignas(64) float res[MB * 16];
  const int32_t seg_end = p.split_begin[s + 1];
  for (int32_t c0 = p.split_begin[s]; c0 < seg_end; c0 += kChunk) {
    const int nc = seg_end - c0 < kChunk ? seg_end - c0 : kChunk;
    // Scales of 16 rows are 16 strided loads: gather them once per chunk of segments, reading
    // each row's consecutive groups contiguously, and reuse them for every block of x rows.
    for (int i = 0; i < nc * 16; ++i) sc[i] = 0.0f;  // padded rows contribute 0
    for (int r = 0; r < rows; ++r) {
      const int64_t base = (t * 16 + r) * p.ng;
      for (int i = 0; i < nc; ++i)
        sc[i * 16 + r] = load_as_f32(p.w.scales, p.w.scale_dtype, base + p.segments[c0 + i].g);
    }
    for (int i = 0; i < nc; ++i) {
      const Segment seg = p.segments[c0 + i];
      const VF zc = zero_offsets<O, BITS>(p, t, seg.g);
      const VF scv = O::loadf(sc + i * 16);
      const int32_t* wp = tile_words + static_cast<int64_t>(seg.b0) * BITS * 16;
      const int nblk = seg.b1 - seg.b0;
      const float* xseg = p.xf + mbase * p.kp;
      const float* xs = p.xs + mbase * p.n_segments + (c0 + i);
      for (int64_t m0 = 0, mr = 0; m0 < m; m0 += mr) {
        mr = row_block(MB, m - m0);
        // Row block [m0, m0 + mr) is stored interleaved: [kp][mr] at xf + m0 * kp.
        accumulate_dispatch<O, BITS, MB>(static_cast<int>(mr), wp, nblk,
                                         xseg + m0 * p.kp + static_cast<int64_t>(seg.b0) * 32 * mr, res);
        for (int mi = 0; mi < mr; ++mi) {
          // y += s * (sum x q - z * sum x) = s * (C * acc - (C + z) * xs)
          const VF inner = O::sub(O::mul(O::loadf(res + mi * 16), cvec),
                                  O::mul(zc, O::set1(xs[(m0 + mi) * p.n_segments])));
          float* y = part + (m0 + mi) * 16;
          O::storef(y, O::fma(scv, inner, O::loadf(y)));
        }
      }
    }
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
  const int64_t nb = (w.k + 31) / 32, ng = w.k / w.group_size, nzb = (ng + 31) / 32;
  const int rows = static_cast<int>(w.n - t * 16 < 16 ? w.n - t * 16 : 16);
  for (int r = 0; r < rows; ++r) {
    const int64_t row = t * 16 + r;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t g = (b * 32) / w.group_size;  // a block never straddles two groups
      const float s = load_as_f32(w.scales, w.scale_dtype, row * ng + g);
      const float z = static_cast<float>(zero_point(w.zeros, nzb, t, g, r, BITS));
      const int32_t* words = w.packed + (t * nb + b) * BITS * 16 + r;
      uint32_t wd[BITS];
      for (int i = 0; i < BITS; ++i) wd[i] = static_cast<uint32_t>(words[i * 16]);
      float vals[32];
      for (int v = 0; v < 32; ++v) {
        uint32_t q;
        if constexpr (BITS == 3) {
          q = ((wd[v >> 4] >> (2 * (v & 15))) & 3u) | (((wd[2] >> v) & 1u) << 2);
        } else {
          constexpr int F = 32 / BITS;
          q = (wd[v / F] >> (BITS * (v % F))) & ((1u << BITS) - 1u);
        }
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
