// Decode attention over the CPU row cache (services/inference_gateway/core/row_cache.py): one query
// per sequence, the query heads of a key-value group together, reading only each row's live context.
//
// q        [R, Hq, D]        bf16 or fp32 (the model's dtype)
// k_rows   [R, Hkv, D, C]    keys as the row cache stores them (transposed; C: its capacity)
// v_rows   [R, Hkv, C, D]
// lens     [R] int64         live positions of each row (0: the row has no decode; its output is 0)
// out      [R, Hq, D]        the query's dtype
//
// Scores, softmax and the weighted sum are computed in fp32 (aten's bf16 batched matmuls round the
// scores and probabilities to bf16). The loops are plain C++ that the compiler vectorises (-O3 with
// the target's vector flags); exp is a polynomial so that it vectorises too (|rel. error| < 2e-7).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <immintrin.h>

namespace {

// 16 values from fp32 or bf16 storage as fp32 lanes; ``count`` < 16 reads a masked tail
inline __m512 load16(const float* p, int count = 16) {
  return count == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
}
inline __m512 load16(const uint16_t* p, int count = 16) {
  __m256i bits = count == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                             : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) {
  uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void store1(float* p, float v) { *p = v; }
inline void store1(uint16_t* p, float v) {  // fp32 -> bf16, round to nearest even (NaN stays NaN)
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) {
    *p = static_cast<uint16_t>((bits >> 16) | 0x40);
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  *p = static_cast<uint16_t>(bits >> 16);
}

// exp(x) for x <= 0 (scores less their maximum): 2^(x log2 e) = 2^n * 2^f, 2^f by a degree-6
// polynomial on [0, 1) (relative error < 2e-7), 2^n by scalef
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// One (row, kv head): its G query heads over its n live positions. Registers hold G score vectors
// while a block of 16 positions is scored, then G x 4 output vectors while 64 channels are summed.
template <int G, typename T>
void attend_group(const float* q, const T* kt, const T* vr, int64_t n, int64_t d, int64_t cap, float* scores,
                  int64_t stride, T* out) {
  // scores: W vectors of 16 positions at a time, so each key row is read a cache line at once
  constexpr int W = G <= 4 ? 4 : 2;
  for (int64_t l0 = 0; l0 < n; l0 += 16 * W) {
    int count[W];
    for (int w = 0; w < W; ++w) count[w] = static_cast<int>(std::clamp<int64_t>(n - l0 - 16 * w, 0, 16));
    __m512 acc[G][W];
    for (int j = 0; j < G; ++j)
      for (int w = 0; w < W; ++w) acc[j][w] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const T* krow = kt + c * cap + l0;
      __m512 k[W];
      for (int w = 0; w < W; ++w) k[w] = count[w] > 0 ? load16(krow + 16 * w, count[w]) : _mm512_setzero_ps();
      for (int j = 0; j < G; ++j) {
        const __m512 qc = _mm512_set1_ps(q[j * d + c]);
        for (int w = 0; w < W; ++w) acc[j][w] = _mm512_fmadd_ps(qc, k[w], acc[j][w]);
      }
    }
    for (int j = 0; j < G; ++j)
      for (int w = 0; w < W; ++w)
        if (count[w] > 0) _mm512_storeu_ps(scores + j * stride + l0 + 16 * w, acc[j][w]);
  }
  const int64_t padded = (n + 15) / 16 * 16;
  for (int j = 0; j < G; ++j) {
    float* s = scores + j * stride;
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t l0 = 0; l0 < n; l0 += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, n - l0));
      top = _mm512_mask_max_ps(top, static_cast<__mmask16>((1u << count) - 1), top, _mm512_loadu_ps(s + l0));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t l0 = 0; l0 < padded; l0 += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, n - l0));
      const __m512 e = _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << count) - 1),
                                           exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + l0), m)));
      _mm512_storeu_ps(s + l0, e);  // zero past n: the tail adds nothing below
      total = _mm512_add_ps(total, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    for (int64_t l0 = 0; l0 < padded; l0 += 16) _mm512_storeu_ps(s + l0, _mm512_mul_ps(_mm512_loadu_ps(s + l0), inv));
  }
  for (int64_t c0 = 0; c0 < d; c0 += 64) {
    const int width = static_cast<int>(std::min<int64_t>(64, d - c0));
    const int parts = (width + 15) / 16;
    __m512 acc[G][4];
    for (int j = 0; j < G; ++j)
      for (int i = 0; i < 4; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t l = 0; l < n; ++l) {
      const T* vrow = vr + l * d + c0;
      __m512 v[4];
      for (int i = 0; i < parts; ++i) v[i] = load16(vrow + 16 * i, std::min(16, width - 16 * i));
      for (int j = 0; j < G; ++j) {
        const __m512 p = _mm512_set1_ps(scores[j * stride + l]);
        for (int i = 0; i < parts; ++i) acc[j][i] = _mm512_fmadd_ps(p, v[i], acc[j][i]);
      }
    }
    alignas(64) float buffer[64];
    for (int j = 0; j < G; ++j) {
      for (int i = 0; i < parts; ++i) _mm512_store_ps(buffer + 16 * i, acc[j][i]);
      for (int c = 0; c < width; ++c) store1(out + j * d + c0 + c, buffer[c]);
    }
  }
}

template <typename T>
using GroupKernel = void (*)(const float*, const T*, const T*, int64_t, int64_t, int64_t, float*, int64_t, T*);

template <typename T>
GroupKernel<T> kernel_for(int64_t groups) {
  switch (groups) {
    case 1: return attend_group<1, T>;
    case 2: return attend_group<2, T>;
    case 3: return attend_group<3, T>;
    case 4: return attend_group<4, T>;
    case 5: return attend_group<5, T>;
    case 6: return attend_group<6, T>;
    case 7: return attend_group<7, T>;
    case 8: return attend_group<8, T>;
    default: return nullptr;
  }
}

template <typename T>
void decode(const T* q, const T* k, const T* v, const int64_t* lens, T* out, int64_t rows, int64_t hq,
            int64_t hkv, int64_t d, int64_t cap, float scale) {
  const int64_t groups = hq / hkv;
  const GroupKernel<T> kernel = kernel_for<T>(groups);
  at::parallel_for(0, rows * hkv, 1, [&](int64_t begin, int64_t end) {
    const int64_t stride = (cap + 15) / 16 * 16;  // a score row, padded to whole vectors
    std::vector<float> scores(static_cast<size_t>(groups * stride));
    std::vector<float> qf(static_cast<size_t>(groups * d));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / hkv, h = item % hkv;
      const int64_t n = std::min(lens[r], cap);
      T* o = out + (r * hq + h * groups) * d;
      if (n <= 0) {
        for (int64_t i = 0; i < groups * d; ++i) store1(o + i, 0.0f);
        continue;
      }
      const T* qr = q + (r * hq + h * groups) * d;
      for (int64_t i = 0; i < groups * d; ++i) qf[i] = load1(qr + i) * scale;
      kernel(qf.data(), k + (r * hkv + h) * d * cap, v + (r * hkv + h) * cap * d, n, d, cap, scores.data(), stride, o);
    }
  });
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_rows, const at::Tensor& v_rows,
                            const at::Tensor& lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_rows.dim() == 4 && v_rows.dim() == 4, "q [R,Hq,D], k_rows [R,Hkv,D,C], v_rows [R,Hkv,C,D]");
  TORCH_CHECK(q.device().is_cpu() && k_rows.device().is_cpu() && v_rows.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.scalar_type() == k_rows.scalar_type() && q.scalar_type() == v_rows.scalar_type(),
              "q, k_rows and v_rows need one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, "float32 or bfloat16 only");
  TORCH_CHECK(lens.scalar_type() == at::kLong && lens.dim() == 1, "lens: int64 [R]");
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t hkv = k_rows.size(1), cap = k_rows.size(3);
  TORCH_CHECK(k_rows.size(0) >= rows && v_rows.size(0) >= rows && lens.size(0) == rows, "rows differ");
  TORCH_CHECK(hkv > 0 && hq % hkv == 0 && hq / hkv <= 8, "query heads must be 1 to 8 times the key-value heads");
  TORCH_CHECK(k_rows.size(2) == d && v_rows.size(1) == hkv && v_rows.size(2) == cap && v_rows.size(3) == d,
              "k_rows [R,Hkv,D,C] and v_rows [R,Hkv,C,D] do not match q");
  TORCH_CHECK(k_rows.is_contiguous() && v_rows.is_contiguous(), "the row cache's storage must be contiguous");
  auto qc = q.contiguous();
  auto lc = lens.contiguous();
  auto out = at::empty_like(qc);
  const float s = static_cast<float>(scale);
  if (q.scalar_type() == at::kFloat) {
    decode(qc.data_ptr<float>(), k_rows.data_ptr<float>(), v_rows.data_ptr<float>(), lc.data_ptr<int64_t>(),
           out.data_ptr<float>(), rows, hq, hkv, d, cap, s);
  } else {
    auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
    decode(bits(qc), bits(k_rows), bits(v_rows), lc.data_ptr<int64_t>(),
           reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), rows, hq, hkv, d, cap, s);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(puyu, m) {
  m.def("decode_attention(Tensor q, Tensor k_rows, Tensor v_rows, Tensor lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) { m.impl("decode_attention", &decode_attention); }
