// Quantised codes -> fp32 weights, one pass (puyu::dequantize_codes), for the CPU's fp32 path of
// quantised layers: the weight is rebuilt into a scratch buffer right before an fp32 matmul reads it,
// so it stays packed at rest. Each element is (q - z) * s in fp32 with the group's scale and zero
// point: the reference's dequantisation exactly ((q - z) is a small whole number, one rounding).
//
// codes   int4: uint8 [out, in / 2], input 2j in the low nibble, 2j + 1 in the high one
//         int8: uint8 [out, in]
// scales  fp32 [out, groups]     zeros fp32 [out, groups]     out fp32 [out, in] (written)
//
// Plain loops the compiler vectorises (-O3 with AVX2/FMA).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace {

void dequantize_codes(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                      int64_t group, at::Tensor out) {
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 2 && codes.is_contiguous(), "codes: contiguous uint8 [out, in / (8 / bits)]");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 2 && out.is_contiguous(), "out: contiguous fp32 [out, in]");
  const int64_t rows = out.size(0), in = out.size(1);
  TORCH_CHECK(codes.size(0) == rows && codes.size(1) * (8 / bits) == in, "codes do not match out's shape");
  TORCH_CHECK(group > 0 && in % group == 0 && (bits == 8 || group % 2 == 0), "group must divide the inputs (and be even for int4)");
  const int64_t groups = in / group;
  for (const at::Tensor& t : {scales, zeros}) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 2 && t.size(0) == rows && t.size(1) == groups,
                "scales and zeros: contiguous fp32 [out, groups]");
  }
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  const float* z = zeros.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t row_bytes = codes.size(1);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const float scale = s[r * groups + g], zero = z[r * groups + g];
        float* dst = o + r * in + g * group;
        if (bits == 4) {
          const uint8_t* src = c + r * row_bytes + g * group / 2;
          for (int64_t j = 0; j < group / 2; ++j) {
            dst[2 * j] = (static_cast<float>(src[j] & 15) - zero) * scale;
            dst[2 * j + 1] = (static_cast<float>(src[j] >> 4) - zero) * scale;
          }
        } else {
          const uint8_t* src = c + r * row_bytes + g * group;
          for (int64_t k = 0; k < group; ++k) dst[k] = (static_cast<float>(src[k]) - zero) * scale;
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(puyu, m) {
  m.def("dequantize_codes(Tensor codes, Tensor scales, Tensor zeros, int bits, int group, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) { m.impl("dequantize_codes", &dequantize_codes); }
