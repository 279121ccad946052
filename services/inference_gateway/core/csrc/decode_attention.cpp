// Decode attention over the CPU row cache (services/inference_gateway/core/row_cache.py): one query
// per sequence, the query heads of a key-value group together, reading only each row's live context.
//
// q        [R, Hq, D]        bf16 or fp32 (the model's dtype)
// k_rows   [R, Hkv, D, C]    keys as the row cache stores them (transposed; C: its capacity)
// v_rows   [R, Hkv, C, D]
// lens     [R] int64         live positions of each row (0: the row has no decode; its output is 0)
// out      [R, Hq, D]        the query's dtype
//
// An 8-bit cache stores k_rows and v_rows as int8 or as fp8 e4m3 bits (uint8), with one fp16 scale per
// (row, head, position), k_scale and v_scale [R, Hkv, C]: a key's scale multiplies its score, a value's
// its probability, so the 8-bit values are read as they are stored and never dequantised into a copy.
//
// Scores, softmax and the weighted sum are computed in fp32 (aten's bf16 batched matmuls round the
// scores and probabilities to bf16). exp is a polynomial so that it vectorises (|rel. error| < 2e-7).
//
// The same source builds for AVX-512 (16 lanes) and for AVX2 with FMA and F16C (8 lanes): the ``Vec``
// below is the only part that differs (cpu_attention.py loads the widest build this CPU runs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>

namespace {

// fp8 e4m3 bits, kept as uint8 by the cache (its own type so that overloads tell it from a byte)
struct Fp8 {
  uint8_t bits;
};

// ``count`` (< lanes) leading elements of ``p`` in a zeroed buffer of whole lanes: the tails' loads
template <int L, typename T>
struct Tail {
  alignas(64) T buffer[L];
  Tail(const T* p, int count) {
    std::memset(buffer, 0, sizeof(buffer));
    std::memcpy(buffer, p, sizeof(T) * static_cast<size_t>(count));
  }
};

#if defined(__AVX512F__)
struct Vec {
  static constexpr int L = 16;
  using R = __m512;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_add(R a) { return _mm512_reduce_add_ps(a); }
  static float reduce_max(R a) { return _mm512_reduce_max_ps(a); }
  static void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  static __mmask16 mask(int count) { return static_cast<__mmask16>((1u << count) - 1); }
  // lanes at and past ``count`` replaced by ``fill``
  static R keep(R a, int count, float fill) { return _mm512_mask_blend_ps(mask(count), set1(fill), a); }
  // x <= 0: 2^(x log2 e) = 2^n * 2^f, 2^f by a degree-6 polynomial on [0, 1), 2^n by scalef
  static R floor(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static R scale2(R p, R n) { return _mm512_scalef_ps(p, n); }
  static R load(const float* p, int count = L) {
    return count == L ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask(count), p);
  }
  static R from_bf16(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }
  static __m256i load16bit(const uint16_t* p, int count) {
    return count == L ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(mask(count), p);
  }
  static __m128i load8bit(const void* p, int count) {
    return count == L ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(mask(count), p);
  }
  static R load(const uint16_t* p, int count = L) { return from_bf16(load16bit(p, count)); }  // bf16
  static R load_half(const uint16_t* p, int count = L) { return _mm512_cvtph_ps(load16bit(p, count)); }  // fp16
  static R load(const int8_t* p, int count = L) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load8bit(p, count))); }
  // e4m3 -> fp32 through fp16: the 7 exponent-and-mantissa bits moved up 7 are an fp16 of the same
  // pattern (normals and subnormals alike) worth 2^-8 of the e4m3 value; callers fold 2^8 into the
  // scale. NaN (0x7f) never occurs: the cache clamps to +-448 before it rounds to e4m3.
  static R load(const Fp8* p, int count = L) {
    const __m256i wide = _mm256_cvtepu8_epi16(load8bit(p, count));
    const __m256i half = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(wide, _mm256_set1_epi16(0x7f)), 7),
                                         _mm256_slli_epi16(_mm256_and_si256(wide, _mm256_set1_epi16(0x80)), 8));
    return _mm512_cvtph_ps(half);
  }
};
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
struct Vec {
  static constexpr int L = 8;
  using R = __m256;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_add(R a) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static float reduce_max(R a) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static R keep(R a, int count, float fill) {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_blendv_ps(set1(fill), a, _mm256_castsi256_ps(live));
  }
  static R floor(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  // p * 2^n for whole n in [-126, 0] (the exponent's range here): n added to p's exponent field
  static R scale2(R p, R n) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
  }
  static R load(const float* p, int count = L) {
    if (count == L) return _mm256_loadu_ps(p);
    return _mm256_loadu_ps(Tail<L, float>(p, count).buffer);
  }
  static __m128i load16bit(const uint16_t* p, int count) {
    if (count == L) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(Tail<L, uint16_t>(p, count).buffer));
  }
  static __m128i load8bit(const uint8_t* p, int count) {
    if (count == L) return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(Tail<L, uint8_t>(p, count).buffer));
  }
  static R load(const uint16_t* p, int count = L) {  // bf16
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16bit(p, count)), 16));
  }
  static R load_half(const uint16_t* p, int count = L) { return _mm256_cvtph_ps(load16bit(p, count)); }  // fp16
  static R load(const int8_t* p, int count = L) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8bit(reinterpret_cast<const uint8_t*>(p), count)));
  }
  static R load(const Fp8* p, int count = L) {  // as the AVX-512 build: through fp16, worth 2^-8
    const __m128i wide = _mm_cvtepu8_epi16(load8bit(reinterpret_cast<const uint8_t*>(p), count));
    const __m128i half = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(wide, _mm_set1_epi16(0x7f)), 7),
                                      _mm_slli_epi16(_mm_and_si128(wide, _mm_set1_epi16(0x80)), 8));
    return _mm256_cvtph_ps(half);
  }
};
#else
#error "decode_attention.cpp builds for AVX-512 or for AVX2 with FMA and F16C"
#endif

constexpr int L = Vec::L;
using R = Vec::R;

template <typename KV>
constexpr float unit_of() {  // what a scale is multiplied by for the loaded values to be the stored ones
  return std::is_same_v<KV, Fp8> ? 256.0f : 1.0f;
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
// polynomial on [0, 1) (relative error < 2e-7), 2^n put in the exponent
inline R exp_nonpositive(R x) {
  x = Vec::max(x, Vec::set1(-87.0f));
  const R t = Vec::mul(x, Vec::set1(1.44269504088896341f));
  const R n = Vec::floor(t);
  const R f = Vec::sub(t, n);
  R p = Vec::set1(1.535336188319500e-4f);
  p = Vec::fmadd(p, f, Vec::set1(1.339887440266574e-3f));
  p = Vec::fmadd(p, f, Vec::set1(9.618437357674640e-3f));
  p = Vec::fmadd(p, f, Vec::set1(5.550332471162809e-2f));
  p = Vec::fmadd(p, f, Vec::set1(2.402264791363012e-1f));
  p = Vec::fmadd(p, f, Vec::set1(6.931472028550421e-1f));
  p = Vec::fmadd(p, f, Vec::set1(1.0f));
  return Vec::scale2(p, n);
}

// One (row, kv head): its G query heads over its n live positions. Registers hold G x W score vectors
// while W vectors of positions are scored, then G x 4 output vectors while 4 vectors of channels are
// summed. ``ks``/``vs``: the fp16 scales of an 8-bit row's keys and values (nullptr for 16/32-bit rows).
template <int G, typename KV, typename O>
void attend_group(const float* q, const KV* kt, const KV* vr, const uint16_t* ks, const uint16_t* vs, int64_t n,
                  int64_t d, int64_t cap, float* scores, int64_t stride, O* out) {
  // W vectors of positions at a time (each key row read a cache line at once), within the registers
  constexpr int W = L == 16 ? (G <= 4 ? 4 : 2) : (G <= 2 ? 4 : G <= 4 ? 2 : 1);
  for (int64_t l0 = 0; l0 < n; l0 += L * W) {
    int count[W];
    for (int w = 0; w < W; ++w) count[w] = static_cast<int>(std::clamp<int64_t>(n - l0 - L * w, 0, L));
    R acc[G][W];
    for (int j = 0; j < G; ++j)
      for (int w = 0; w < W; ++w) acc[j][w] = Vec::zero();
    for (int64_t c = 0; c < d; ++c) {
      const KV* krow = kt + c * cap + l0;
      R k[W];
      for (int w = 0; w < W; ++w) k[w] = count[w] > 0 ? Vec::load(krow + L * w, count[w]) : Vec::zero();
      for (int j = 0; j < G; ++j) {
        const R qc = Vec::set1(q[j * d + c]);
        for (int w = 0; w < W; ++w) acc[j][w] = Vec::fmadd(qc, k[w], acc[j][w]);
      }
    }
    if (ks != nullptr) {  // score = (q . k_stored) * k_scale
      for (int w = 0; w < W; ++w) {
        if (count[w] <= 0) continue;
        const R scale = Vec::mul(Vec::load_half(ks + l0 + L * w, count[w]), Vec::set1(unit_of<KV>()));
        for (int j = 0; j < G; ++j) acc[j][w] = Vec::mul(acc[j][w], scale);
      }
    }
    for (int j = 0; j < G; ++j)
      for (int w = 0; w < W; ++w)
        if (count[w] > 0) Vec::store(scores + j * stride + l0 + L * w, acc[j][w]);
  }
  const int64_t padded = (n + L - 1) / L * L;
  for (int j = 0; j < G; ++j) {
    float* s = scores + j * stride;
    R top = Vec::set1(-INFINITY);
    for (int64_t l0 = 0; l0 < n; l0 += L) {
      const int count = static_cast<int>(std::min<int64_t>(L, n - l0));
      top = Vec::max(top, Vec::keep(Vec::load(s + l0), count, -INFINITY));
    }
    const R m = Vec::set1(Vec::reduce_max(top));
    R total = Vec::zero();
    for (int64_t l0 = 0; l0 < padded; l0 += L) {
      const int count = static_cast<int>(std::min<int64_t>(L, n - l0));
      const R e = Vec::keep(exp_nonpositive(Vec::sub(Vec::load(s + l0), m)), count, 0.0f);
      Vec::store(s + l0, e);  // zero past n: the tail adds nothing below
      total = Vec::add(total, e);
    }
    const R inv = Vec::set1(1.0f / Vec::reduce_add(total));
    for (int64_t l0 = 0; l0 < padded; l0 += L) {
      R p = Vec::mul(Vec::load(s + l0), inv);
      if (vs != nullptr) {  // out = sum p * (v_stored * v_scale) = sum (p * v_scale) * v_stored
        const int count = static_cast<int>(std::min<int64_t>(L, n - l0));
        p = Vec::mul(p, Vec::mul(Vec::load_half(vs + l0, count), Vec::set1(unit_of<KV>())));
      }
      Vec::store(s + l0, p);
    }
  }
  constexpr int CH = 4 * L;  // channels per pass
  for (int64_t c0 = 0; c0 < d; c0 += CH) {
    const int width = static_cast<int>(std::min<int64_t>(CH, d - c0));
    const int parts = (width + L - 1) / L;
    R acc[G][4];
    for (int j = 0; j < G; ++j)
      for (int i = 0; i < 4; ++i) acc[j][i] = Vec::zero();
    for (int64_t l = 0; l < n; ++l) {
      const KV* vrow = vr + l * d + c0;
      R v[4];
      for (int i = 0; i < parts; ++i) v[i] = Vec::load(vrow + L * i, std::min(L, width - L * i));
      for (int j = 0; j < G; ++j) {
        const R p = Vec::set1(scores[j * stride + l]);
        for (int i = 0; i < parts; ++i) acc[j][i] = Vec::fmadd(p, v[i], acc[j][i]);
      }
    }
    alignas(64) float buffer[CH];
    for (int j = 0; j < G; ++j) {
      for (int i = 0; i < parts; ++i) Vec::store(buffer + L * i, acc[j][i]);
      for (int c = 0; c < width; ++c) store1(out + j * d + c0 + c, buffer[c]);
    }
  }
}

template <typename KV, typename O>
using GroupKernel = void (*)(const float*, const KV*, const KV*, const uint16_t*, const uint16_t*, int64_t, int64_t,
                             int64_t, float*, int64_t, O*);

template <typename KV, typename O>
GroupKernel<KV, O> kernel_for(int64_t groups) {
  switch (groups) {
    case 1: return attend_group<1, KV, O>;
    case 2: return attend_group<2, KV, O>;
    case 3: return attend_group<3, KV, O>;
    case 4: return attend_group<4, KV, O>;
    case 5: return attend_group<5, KV, O>;
    case 6: return attend_group<6, KV, O>;
    case 7: return attend_group<7, KV, O>;
    case 8: return attend_group<8, KV, O>;
    default: return nullptr;
  }
}

// ``ks``/``vs``: [R, Hkv, C] fp16 scales of an 8-bit cache, or nullptr
template <typename KV, typename O>
void decode(const O* q, const KV* k, const KV* v, const uint16_t* ks, const uint16_t* vs, const int64_t* lens, O* out,
            int64_t rows, int64_t hq, int64_t hkv, int64_t d, int64_t cap, float scale) {
  const int64_t groups = hq / hkv;
  const GroupKernel<KV, O> kernel = kernel_for<KV, O>(groups);
  at::parallel_for(0, rows * hkv, 1, [&](int64_t begin, int64_t end) {
    const int64_t stride = (cap + L - 1) / L * L;  // a score row, padded to whole vectors
    std::vector<float> scores(static_cast<size_t>(groups * stride));
    std::vector<float> qf(static_cast<size_t>(groups * d));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / hkv, h = item % hkv;
      const int64_t n = std::min(lens[r], cap);
      O* o = out + (r * hq + h * groups) * d;
      if (n <= 0) {
        for (int64_t i = 0; i < groups * d; ++i) store1(o + i, 0.0f);
        continue;
      }
      const O* qr = q + (r * hq + h * groups) * d;
      for (int64_t i = 0; i < groups * d; ++i) qf[i] = load1(qr + i) * scale;
      const int64_t head = r * hkv + h;
      kernel(qf.data(), k + head * d * cap, v + head * cap * d, ks == nullptr ? nullptr : ks + head * cap,
             vs == nullptr ? nullptr : vs + head * cap, n, d, cap, scores.data(), stride, o);
    }
  });
}

const uint16_t* bf16_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
const uint16_t* fp16_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>()); }

// q's dtype picks the output type; the stored rows' dtype picks the reader
template <typename KV>
void decode_as(const at::Tensor& q, const KV* k, const KV* v, const uint16_t* ks, const uint16_t* vs,
               const at::Tensor& lens, at::Tensor& out, int64_t hkv, int64_t cap, float scale) {
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2);
  if (q.scalar_type() == at::kFloat) {
    decode(q.data_ptr<float>(), k, v, ks, vs, lens.data_ptr<int64_t>(), out.data_ptr<float>(), rows, hq, hkv, d, cap,
           scale);
  } else {
    decode(bf16_bits(q), k, v, ks, vs, lens.data_ptr<int64_t>(),
           reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), rows, hq, hkv, d, cap, scale);
  }
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_rows, const at::Tensor& v_rows,
                            const at::Tensor& lens, double scale, const c10::optional<at::Tensor>& k_scale,
                            const c10::optional<at::Tensor>& v_scale, bool fp8) {
  TORCH_CHECK(q.dim() == 3 && k_rows.dim() == 4 && v_rows.dim() == 4, "q [R,Hq,D], k_rows [R,Hkv,D,C], v_rows [R,Hkv,C,D]");
  TORCH_CHECK(q.device().is_cpu() && k_rows.device().is_cpu() && v_rows.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, "q: float32 or bfloat16 only");
  TORCH_CHECK(k_rows.scalar_type() == v_rows.scalar_type(), "k_rows and v_rows need one dtype");
  const bool quantized = k_scale.has_value() || v_scale.has_value();
  TORCH_CHECK(k_scale.has_value() == v_scale.has_value(), "k_scale and v_scale go together");
  TORCH_CHECK(!fp8 || quantized, "fp8 rows need their scales");
  if (quantized) {
    TORCH_CHECK(k_rows.scalar_type() == (fp8 ? at::kByte : at::kChar),
                fp8 ? "fp8 rows are stored as uint8 bits" : "scaled rows are int8 (or fp8 bits with fp8=True)");
  } else {
    TORCH_CHECK(k_rows.scalar_type() == q.scalar_type(), "unscaled rows need q's dtype");
  }
  TORCH_CHECK(lens.scalar_type() == at::kLong && lens.dim() == 1, "lens: int64 [R]");
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t hkv = k_rows.size(1), cap = k_rows.size(3);
  TORCH_CHECK(k_rows.size(0) >= rows && v_rows.size(0) >= rows && lens.size(0) == rows, "rows differ");
  TORCH_CHECK(hkv > 0 && hq % hkv == 0 && hq / hkv <= 8, "query heads must be 1 to 8 times the key-value heads");
  TORCH_CHECK(k_rows.size(2) == d && v_rows.size(1) == hkv && v_rows.size(2) == cap && v_rows.size(3) == d,
              "k_rows [R,Hkv,D,C] and v_rows [R,Hkv,C,D] do not match q");
  TORCH_CHECK(k_rows.is_contiguous() && v_rows.is_contiguous(), "the row cache's storage must be contiguous");
  if (quantized) {
    for (const at::Tensor& t : {*k_scale, *v_scale}) {
      TORCH_CHECK(t.scalar_type() == at::kHalf && t.dim() == 3 && t.is_contiguous(), "scales: contiguous fp16 [R,Hkv,C]");
      TORCH_CHECK(t.size(0) >= rows && t.size(1) == hkv && t.size(2) == cap, "scales [R,Hkv,C] do not match the rows");
    }
  }
  auto qc = q.contiguous();
  auto lc = lens.contiguous();
  auto out = at::empty_like(qc);
  const float s = static_cast<float>(scale);
  if (!quantized) {
    if (q.scalar_type() == at::kFloat) {
      decode_as(qc, k_rows.data_ptr<float>(), v_rows.data_ptr<float>(), nullptr, nullptr, lc, out, hkv, cap, s);
    } else {
      decode_as(qc, bf16_bits(k_rows), bf16_bits(v_rows), nullptr, nullptr, lc, out, hkv, cap, s);
    }
  } else if (fp8) {
    decode_as(qc, reinterpret_cast<const Fp8*>(k_rows.data_ptr<uint8_t>()),
              reinterpret_cast<const Fp8*>(v_rows.data_ptr<uint8_t>()), fp16_bits(*k_scale), fp16_bits(*v_scale), lc,
              out, hkv, cap, s);
  } else {
    decode_as(qc, k_rows.data_ptr<int8_t>(), v_rows.data_ptr<int8_t>(), fp16_bits(*k_scale), fp16_bits(*v_scale), lc,
              out, hkv, cap, s);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(puyu, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_rows, Tensor v_rows, Tensor lens, float scale, Tensor? k_scale=None, "
      "Tensor? v_scale=None, bool fp8=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) { m.impl("decode_attention", &decode_attention); }
