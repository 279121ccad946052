// W4A8 / W8A8 linear layer on x86 CPUs with AVX512-VNNI (puyu::wxa8_linear).
//
// y[m, n] = sx[m] * sum_g s[g, n] * (sum_{k in g} q[n, k] * xq[m, k] - z[g, n] * sum_{k in g} xq[m, k])
//
// The activations are quantised here, per row, to int8 (symmetric: sx = absmax / 127); the weights keep
// their unsigned codes (int4: 0..15, int8: 0..255): exactly the u8 operand of vpdpbusd (u8 x s8 -> s32),
// the activations its s8 operand, as llama.cpp's Q4_0 x Q8_0 dot products do. Each group's sum is exact
// in int32, the zero point subtracted in int32 too, then converted once and scaled in fp32.
//
// Weight layout (shared/quantization/cpu_kernel.py packs it): tiles of 16 output channels; in a tile,
// 64-byte vectors whose 32-bit lane j holds channel j's codes for 4 consecutive inputs.
//   int8: vector i holds inputs 4i..4i+3                              (a tile is in_features * 16 bytes)
//   int4: vector i holds inputs 8i..8i+3 in the low nibbles and
//         8i+4..8i+7 in the high nibbles                               (a tile is in_features * 8 bytes)
// Scales [groups, out] fp32, zero points [groups, out] int32.
//
// The whole file is compiled for AVX512F/BW/VL/DQ/VNNI (cpu_kernel.py passes the flags): the library is
// loaded only after the CPU's flags were checked.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int kTile = 16;     // output channels per tile (one zmm of int32 accumulators)
constexpr int kRows = 4;      // rows of x per register block
constexpr int kTiles = 4;     // tiles per register block
constexpr int64_t kRowChunk = 64;  // rows of x a thread walks before the next block of tiles

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const c10::BFloat16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }

inline void store16(c10::BFloat16* p, __m512 v) {
  // round to nearest even, as torch's fp32 -> bf16 conversion; NaN stays a quiet NaN
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// One row of x -> int8 codes xq[K], its scale sx and the codes' sum over each group (K % 16 == 0,
// group % 16 == 0). ``perm``: x's columns in group order (act-order), or null.
template <typename T>
void quantize_row(const T* x, const int64_t* perm, int64_t K, int64_t group, int8_t* xq, float* sx,
                  int32_t* group_sums, float* scratch) {
  const float* src = nullptr;
  if (perm != nullptr) {
    for (int64_t k = 0; k < K; ++k) scratch[k] = static_cast<float>(x[perm[k]]);
    src = scratch;
  }
  __m512 absmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 v = src ? load16(src + k) : load16(x + k);
    absmax = _mm512_max_ps(absmax, _mm512_abs_ps(v));
  }
  const float amax = _mm512_reduce_max_ps(absmax);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  *sx = amax / 127.0f;
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t g0 = 0; g0 < K; g0 += group) {
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = g0; k < g0 + group; k += 16) {
      __m512 v = src ? load16(src + k) : load16(x + k);
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));  // nearest, ties to even
      q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + k), _mm512_cvtepi32_epi8(q));
    }
    group_sums[g0 / group] = _mm512_reduce_add_epi32(sum);
  }
}

// acc += u8 x s8 dot products of 4 (vpdpbusd), in place, for the 4 x 4 block's named accumulators
// (with the intrinsic GCC copied them between registers on every step of the inner loop)
#define DPBUSD(acc, u8, s8) asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8))

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

struct Problem {
  const int8_t* xq;          // [M, K]
  const float* sx;           // [M]
  const int32_t* xsums;      // [M, G]
  const uint8_t* w;          // packed tiles
  const float* scales;       // [G, N]
  const int32_t* zeros;      // [G, N]
  const float* bias;         // [N] or null
  int64_t K, N, G, group;
  int64_t tile_bytes;        // bytes of one tile
};

// Group g of rows m0..m0+MR-1 times tiles t0..t0+NT-1: adds s * (sum q xq - z sum xq) into the fp32
// accumulators ``accf`` (row r, tile t at accf + r * ldc + t * 16), which stay in L1 between groups.
template <int BITS, int MR, int NT>
inline void group_block(const Problem& p, int64_t m0, int64_t t0, int64_t g, float* accf, int64_t ldc) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const int64_t n0 = t0 * kTile;
  __m512i acc[MR][NT];
  // the zero point's term, -z * sum(xq), starts the group's accumulators (exact in int32)
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    __m512i z = _mm512_loadu_si512(p.zeros + g * p.N + n0 + t * kTile);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r)
      acc[r][t] = _mm512_mullo_epi32(z, _mm512_set1_epi32(-p.xsums[(m0 + r) * p.G + g]));
  }
  const int64_t kbeg = g * p.group, kend = kbeg + p.group;
  const int8_t* x0 = p.xq + m0 * p.K;
  const uint8_t* w0 = p.w + t0 * p.tile_bytes;
  if constexpr (BITS == 8) {
    for (int64_t k = kbeg; k < kend; k += 4) {
      __m512i wv[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) wv[t] = _mm512_loadu_si512(w0 + t * p.tile_bytes + k * 16);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        __m512i a = _mm512_set1_epi32(load4(x0 + r * p.K + k));
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[t], a);
      }
    }
  } else {
    for (int64_t k = kbeg; k < kend; k += 8) {
      __m512i wlo[NT], whi[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        __m512i raw = _mm512_loadu_si512(w0 + t * p.tile_bytes + k * 8);
        wlo[t] = _mm512_and_si512(raw, nibble);
        whi[t] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
      }
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        __m512i a0 = _mm512_set1_epi32(load4(x0 + r * p.K + k));
        __m512i a1 = _mm512_set1_epi32(load4(x0 + r * p.K + k + 4));
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wlo[t], a0);
          acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], whi[t], a1);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    __m512 s = _mm512_loadu_ps(p.scales + g * p.N + n0 + t * kTile);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      float* c = accf + r * ldc + t * kTile;
      _mm512_storeu_ps(c, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), s, _mm512_loadu_ps(c)));
    }
  }
}

// The same for the main case, 4 rows x 4 tiles, its 16 accumulators named: with arrays GCC kept some
// of them in memory or copied them between registers on every step.
#define WX_ROWS(M) M(0) M(1) M(2) M(3)
#define WX_DECL(r) __m512i c##r##0, c##r##1, c##r##2, c##r##3;
#define WX_INIT(r)                                                      \
  {                                                                     \
    const __m512i xs = _mm512_set1_epi32(-p.xsums[(m0 + r) * p.G + g]); \
    c##r##0 = _mm512_mullo_epi32(z0, xs);                               \
    c##r##1 = _mm512_mullo_epi32(z1, xs);                               \
    c##r##2 = _mm512_mullo_epi32(z2, xs);                               \
    c##r##3 = _mm512_mullo_epi32(z3, xs);                               \
  }
#define WX_DOT(r, off, w0, w1, w2, w3)                                  \
  {                                                                     \
    const __m512i a = _mm512_set1_epi32(load4(x0 + r * p.K + k + off)); \
    DPBUSD(c##r##0, w0, a);                                             \
    DPBUSD(c##r##1, w1, a);                                             \
    DPBUSD(c##r##2, w2, a);                                             \
    DPBUSD(c##r##3, w3, a);                                             \
  }
#define WX_DOT_LO(r) WX_DOT(r, 0, v0, v1, v2, v3)
#define WX_DOT_HI(r) WX_DOT(r, 4, v0, v1, v2, v3)
#define WX_FINISH(r)                                                                  \
  {                                                                                   \
    float* c = accf + r * ldc;                                                        \
    _mm512_storeu_ps(c, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##0), s0, _mm512_loadu_ps(c)));           \
    _mm512_storeu_ps(c + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##1), s1, _mm512_loadu_ps(c + 16))); \
    _mm512_storeu_ps(c + 32, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##2), s2, _mm512_loadu_ps(c + 32))); \
    _mm512_storeu_ps(c + 48, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##3), s3, _mm512_loadu_ps(c + 48))); \
  }

template <int BITS>
inline void group_block_4x4(const Problem& p, int64_t m0, int64_t t0, int64_t g, float* accf, int64_t ldc) {
  const int64_t n0 = t0 * kTile;
  const int32_t* zg = p.zeros + g * p.N + n0;
  const __m512i z0 = _mm512_loadu_si512(zg), z1 = _mm512_loadu_si512(zg + 16);
  const __m512i z2 = _mm512_loadu_si512(zg + 32), z3 = _mm512_loadu_si512(zg + 48);
  WX_ROWS(WX_DECL)
  WX_ROWS(WX_INIT)
  const int64_t kbeg = g * p.group, kend = kbeg + p.group;
  const int8_t* x0 = p.xq + m0 * p.K;
  const int64_t tb = p.tile_bytes;
  const uint8_t* w0 = p.w + t0 * tb;
  if constexpr (BITS == 8) {
    for (int64_t k = kbeg; k < kend; k += 4) {
      const uint8_t* w = w0 + k * 16;
      const __m512i v0 = _mm512_loadu_si512(w), v1 = _mm512_loadu_si512(w + tb);
      const __m512i v2 = _mm512_loadu_si512(w + 2 * tb), v3 = _mm512_loadu_si512(w + 3 * tb);
      WX_ROWS(WX_DOT_LO)
    }
  } else {
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    for (int64_t k = kbeg; k < kend; k += 8) {
      const uint8_t* w = w0 + k * 8;
      const __m512i r0 = _mm512_loadu_si512(w), r1 = _mm512_loadu_si512(w + tb);
      const __m512i r2 = _mm512_loadu_si512(w + 2 * tb), r3 = _mm512_loadu_si512(w + 3 * tb);
      {
        const __m512i v0 = _mm512_and_si512(r0, nibble), v1 = _mm512_and_si512(r1, nibble);
        const __m512i v2 = _mm512_and_si512(r2, nibble), v3 = _mm512_and_si512(r3, nibble);
        WX_ROWS(WX_DOT_LO)
      }
      {
        const __m512i v0 = _mm512_and_si512(_mm512_srli_epi16(r0, 4), nibble);
        const __m512i v1 = _mm512_and_si512(_mm512_srli_epi16(r1, 4), nibble);
        const __m512i v2 = _mm512_and_si512(_mm512_srli_epi16(r2, 4), nibble);
        const __m512i v3 = _mm512_and_si512(_mm512_srli_epi16(r3, 4), nibble);
        WX_ROWS(WX_DOT_HI)
      }
    }
  }
  const float* sg = p.scales + g * p.N + n0;
  const __m512 s0 = _mm512_loadu_ps(sg), s1 = _mm512_loadu_ps(sg + 16);
  const __m512 s2 = _mm512_loadu_ps(sg + 32), s3 = _mm512_loadu_ps(sg + 48);
  WX_ROWS(WX_FINISH)
}

template <int BITS, int NT>
inline void rows_group(const Problem& p, int64_t m0, int64_t rows, int64_t t0, int64_t g, float* accf,
                       int64_t ldc) {
  switch (rows) {
    case 4:
      if constexpr (NT == 4) {
        group_block_4x4<BITS>(p, m0, t0, g, accf, ldc);
      } else {
        group_block<BITS, 4, NT>(p, m0, t0, g, accf, ldc);
      }
      break;
    case 3: group_block<BITS, 3, NT>(p, m0, t0, g, accf, ldc); break;
    case 2: group_block<BITS, 2, NT>(p, m0, t0, g, accf, ldc); break;
    default: group_block<BITS, 1, NT>(p, m0, t0, g, accf, ldc); break;
  }
}

// Rows [m0, m1) times tiles [t0, t0 + nt): every group, then y = sx * acc (+ bias) into ``out``.
template <int BITS, typename T>
void tile_block(const Problem& p, int64_t m0, int64_t m1, int64_t t0, int64_t nt, float* accf, T* out) {
  const int64_t ldc = kTiles * kTile;
  std::fill(accf, accf + (m1 - m0) * ldc, 0.0f);
  for (int64_t g = 0; g < p.G; ++g) {
    for (int64_t m = m0; m < m1; m += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, m1 - m);
      float* c = accf + (m - m0) * ldc;
      switch (nt) {
        case 4: rows_group<BITS, 4>(p, m, rows, t0, g, c, ldc); break;
        case 3: rows_group<BITS, 3>(p, m, rows, t0, g, c, ldc); break;
        case 2: rows_group<BITS, 2>(p, m, rows, t0, g, c, ldc); break;
        default: rows_group<BITS, 1>(p, m, rows, t0, g, c, ldc); break;
      }
    }
  }
  const int64_t n0 = t0 * kTile;
  for (int64_t m = m0; m < m1; ++m) {
    const __m512 sx = _mm512_set1_ps(p.sx[m]);
    for (int64_t t = 0; t < nt; ++t) {
      __m512 y = _mm512_mul_ps(_mm512_loadu_ps(accf + (m - m0) * ldc + t * kTile), sx);
      if (p.bias != nullptr) y = _mm512_add_ps(y, _mm512_loadu_ps(p.bias + n0 + t * kTile));
      store16(out + m * p.N + n0 + t * kTile, y);
    }
  }
}

template <int BITS, typename T>
void run(const Problem& p, int64_t M, T* out) {
  const int64_t tiles = p.N / kTile;
  const int64_t blocks = (tiles + kTiles - 1) / kTiles;
  // work units: (chunk of rows, block of tiles), the blocks of one chunk consecutive; chunks of 64
  // rows, fewer where the blocks alone would leave threads idle (many cores, few output channels)
  int64_t chunk = kRowChunk;
  const int64_t threads = at::get_num_threads();
  if (blocks < threads && M > kRows) {
    const int64_t splits = std::min<int64_t>((threads + blocks - 1) / blocks, (M + kRows - 1) / kRows);
    chunk = std::min<int64_t>(kRowChunk, ((M + splits - 1) / splits + kRows - 1) / kRows * kRows);
  }
  const int64_t chunks = (M + chunk - 1) / chunk;
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t u0, int64_t u1) {
    alignas(64) float accf[kRowChunk * kTiles * kTile];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m0 = (u / blocks) * chunk, t0 = (u % blocks) * kTiles;
      tile_block<BITS>(p, m0, std::min(M, m0 + chunk), t0, std::min<int64_t>(kTiles, tiles - t0), accf, out);
    }
  });
}

template <typename T>
void quantize_rows(const at::Tensor& x, const int64_t* perm, int64_t group, int8_t* xq, float* sx,
                   int32_t* xsums) {
  const int64_t M = x.size(0), K = x.size(1), G = K / group;
  const T* xp = x.data_ptr<T>();
  auto work = [&](int64_t m0, int64_t m1) {
    std::vector<float> scratch(perm != nullptr ? K : 0);
    for (int64_t m = m0; m < m1; ++m)
      quantize_row<T>(xp + m * K, perm, K, group, xq + m * K, sx + m, xsums + m * G, scratch.data());
  };
  if (M * K >= 1 << 16) {
    at::parallel_for(0, M, 1, work);
  } else {
    work(0, M);
  }
}

at::Tensor wxa8_linear(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& zeros, const std::optional<at::Tensor>& perm,
                       const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  TORCH_CHECK(bits == 4 || bits == 8, "wxa8_linear: bits must be 4 or 8, got ", bits);
  TORCH_CHECK(input.dim() >= 1 && input.device().is_cpu(), "wxa8_linear: x must be a CPU tensor");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "wxa8_linear: x must be float32 or bfloat16");
  const int64_t K = input.size(-1);
  const at::Tensor x = input.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  TORCH_CHECK(group_size > 0 && group_size % 16 == 0 && K % group_size == 0, "wxa8_linear: bad group size ",
              group_size, " for ", K, " inputs");
  const int64_t G = K / group_size;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == G && scales.scalar_type() == at::kFloat &&
                  scales.is_contiguous(),
              "wxa8_linear: scales must be fp32 [groups, out]");
  const int64_t N = scales.size(1);
  TORCH_CHECK(N % kTile == 0, "wxa8_linear: out_features must be a multiple of 16");
  TORCH_CHECK(zeros.sizes() == scales.sizes() && zeros.scalar_type() == at::kInt && zeros.is_contiguous(),
              "wxa8_linear: zeros must be int32 [groups, out]");
  const int64_t tile_bytes = K * kTile * bits / 8;
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.numel() == N / kTile * tile_bytes,
              "wxa8_linear: packed weight has the wrong size");
  const int64_t* perm_ptr = nullptr;
  if (perm.has_value()) {
    TORCH_CHECK(perm->scalar_type() == at::kLong && perm->numel() == K && perm->is_contiguous(),
                "wxa8_linear: perm must be int64 [in]");
    perm_ptr = perm->data_ptr<int64_t>();
  }
  at::Tensor bias32;
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == N, "wxa8_linear: bias must have out_features elements");
    bias32 = bias->to(at::kFloat).contiguous();
    bias_ptr = bias32.data_ptr<float>();
  }

  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = N;
  auto out = at::empty(out_shape, x.options());
  if (M == 0) return out;
  // the quantised activations and their bookkeeping, in one buffer: xq [M, K], sx [M], sums [M, G]
  auto buffer = at::empty({M * K + 4 * M + 4 * M * G + 64}, x.options().dtype(at::kByte));
  uint8_t* base = buffer.data_ptr<uint8_t>();
  int8_t* xq = reinterpret_cast<int8_t*>(base);
  float* sx = reinterpret_cast<float*>(base + ((M * K + 63) / 64) * 64);
  int32_t* xsums = reinterpret_cast<int32_t*>(sx + M);
  if (x.scalar_type() == at::kFloat) {
    quantize_rows<float>(x, perm_ptr, group_size, xq, sx, xsums);
  } else {
    quantize_rows<c10::BFloat16>(x, perm_ptr, group_size, xq, sx, xsums);
  }
  Problem p{xq, sx, xsums, packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), zeros.data_ptr<int32_t>(),
            bias_ptr, K, N, G, group_size, tile_bytes};
  if (x.scalar_type() == at::kFloat) {
    if (bits == 4) run<4>(p, M, out.data_ptr<float>()); else run<8>(p, M, out.data_ptr<float>());
  } else {
    auto* o = out.data_ptr<c10::BFloat16>();
    if (bits == 4) run<4>(p, M, o); else run<8>(p, M, o);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(puyu, m) {
  m.def("wxa8_linear(Tensor x, Tensor packed, Tensor scales, Tensor zeros, Tensor? perm, Tensor? bias, "
        "int bits, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) { m.impl("wxa8_linear", &wxa8_linear); }
