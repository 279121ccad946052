// Elementwise steps of a decoder layer fused into one pass each, rounding where transformers' modules
// round (so a bf16 model gives the same values as its reference forward):
//   rms_norm(x, w, eps)          w * bf16(x * rsqrt(mean(x^2) + eps))  (transformers' LlamaRMSNorm)
//   add_rms_norm(x, d, w, eps)   (s, rms_norm(s, w, eps)) with s = x + d (the residual add)
//   rotary(q, k, cos, sin)       q * cos + rotate_half(q) * sin, each product rounded (apply_rotary_pos_emb)
// x, d [T, H]; w [H]; q [T, Hq, D], k [T, Hk, D]; cos, sin [T, D]; float32 or bfloat16, one dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

inline float get(const float* p, int64_t i) { return p[i]; }
inline float get(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
// fp32 -> bf16 bits, round to nearest even, NaN kept quiet; branch-free so the loops vectorise
inline uint16_t bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>((nan ? (bits | 0x00400000u) : rounded) >> 16);
}
inline float round_to(float, float v) { return v; }
inline float round_to(uint16_t, float v) {
  const uint32_t bits = static_cast<uint32_t>(bf16_bits(v)) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void put(float* p, int64_t i, float v) { p[i] = v; }
inline void put(uint16_t* p, int64_t i, float v) { p[i] = bf16_bits(v); }

template <typename T>
void norm_rows(const T* x, const T* d, const T* w, T* sum, T* out, int64_t rows, int64_t h, float eps) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * h;
      const T* src = x;
      if (d != nullptr) {  // the residual add, rounded to the activations' dtype as torch's add is
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) put(sum, o + i, get(x, o + i) + get(d, o + i));
        src = sum;
      }
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < h; ++i) squares += get(src, o + i) * get(src, o + i);
      const float inv = 1.0f / std::sqrt(squares / static_cast<float>(h) + eps);
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) put(out, o + i, get(w, i) * round_to(T{}, get(src, o + i) * inv));
    }
  });
}

template <typename T>
void rotate(const T* x, const T* cos, const T* sin, T* out, int64_t tokens, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2;
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* c = cos + t * dim;
      const T* s = sin + t * dim;
      for (int64_t hd = 0; hd < heads; ++hd) {
        const int64_t o = (t * heads + hd) * dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {  // first half: x1 * cos - x2 * sin
          const float a = round_to(T{}, get(x, o + i) * get(c, i));
          const float b = round_to(T{}, -get(x, o + i + half) * get(s, i));
          put(out, o + i, a + b);
        }
#pragma omp simd
        for (int64_t i = half; i < dim; ++i) {  // second half: x2 * cos + x1 * sin
          const float a = round_to(T{}, get(x, o + i) * get(c, i));
          const float b = round_to(T{}, get(x, o + i - half) * get(s, i));
          put(out, o + i, a + b);
        }
      }
    }
  });
}

template <typename F>
void dispatch(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kFloat) {
    f(static_cast<float*>(nullptr));
  } else {
    f(static_cast<uint16_t*>(nullptr));
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the input's dtype");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, ": float32 or bfloat16 only");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check(x, x, "x");
  check(w, x, "weight");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && w.size(0) == x.size(1), "x [T, H] and weight [H]");
  auto out = at::empty_like(x);
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    norm_rows<T>(ptr<T>(x), nullptr, ptr<T>(w), nullptr, ptr<T>(out), x.size(0), x.size(1), static_cast<float>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& d, const at::Tensor& w,
                                                double eps) {
  check(x, x, "x");
  check(d, x, "delta");
  check(w, x, "weight");
  TORCH_CHECK(x.dim() == 2 && d.sizes() == x.sizes() && w.dim() == 1 && w.size(0) == x.size(1),
              "x, delta [T, H] and weight [H]");
  auto sum = at::empty_like(x);
  auto out = at::empty_like(x);
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    norm_rows<T>(ptr<T>(x), ptr<T>(d), ptr<T>(w), ptr<T>(sum), ptr<T>(out), x.size(0), x.size(1),
                 static_cast<float>(eps));
  });
  return {sum, out};
}

std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                          const at::Tensor& sin) {
  check(q, q, "q");
  check(k, q, "k");
  check(cos, q, "cos");
  check(sin, q, "sin");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && cos.dim() == 2 && sin.sizes() == cos.sizes(), "q, k [T, H, D]; cos, sin [T, D]");
  TORCH_CHECK(k.size(0) == q.size(0) && cos.size(0) == q.size(0) && k.size(2) == q.size(2) && cos.size(1) == q.size(2)
              && q.size(2) % 2 == 0, "q, k, cos and sin disagree on tokens or head size (even)");
  auto qo = at::empty_like(q);
  auto ko = at::empty_like(k);
  dispatch(q, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rotate<T>(ptr<T>(q), ptr<T>(cos), ptr<T>(sin), ptr<T>(qo), q.size(0), q.size(1), q.size(2));
    rotate<T>(ptr<T>(k), ptr<T>(cos), ptr<T>(sin), ptr<T>(ko), k.size(0), k.size(1), k.size(2));
  });
  return {qo, ko};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(puyu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rotary(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rotary", &rotary);
}
