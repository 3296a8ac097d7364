// A bf16 fc layer at batch 1, y = W·x + b, at the pace the weight can be read: each weight row is read once as it
// lies and multiplied with AVX512-BF16's pair dot products (vdpbf16ps) into fp32 sums, four rows at a time so that
// four streams of loads are in flight. oneDNN's matrix product for one row of x read fc6's 75 MB weight at ~20 GB/s
// on 2 cores of an AMD EPYC (Zen 4) where a plain sum over it ran at ~39 GB/s (alexnet.models.gemv).
//
//   weight: (O, I) bfloat16, contiguous; x: (I,) bfloat16; bias: (O,) bfloat16 or None
//   y: (O,) bfloat16, the fp32 sum rounded once (to nearest even)
//
// Built only where the compiler targets AVX512-BF16 (-march=native on such a CPU); elsewhere `available` is false.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <algorithm>
#include <cstdint>
#include <optional>

#include "bf16.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define ALEXNET_GEMV 1
#else
#define ALEXNET_GEMV 0
#endif

namespace {

#if ALEXNET_GEMV
constexpr int kRows = 4;  // weight rows a pass: four load streams

inline __m512bh load_pairs(const at::BFloat16* p, __mmask32 mask) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

// y[r + j] = Σ_k w[r + j, k]·x[k] for the R rows from r, sums in fp32 (pairs of products per lane, 16 lanes);
// `full` columns by whole vectors, the rest under the `tail` mask.
template <int R>
inline void dot_rows(const at::BFloat16* __restrict w, const at::BFloat16* __restrict x,
                     const at::BFloat16* __restrict bias, at::BFloat16* __restrict y, int64_t in, int64_t r,
                     int64_t full, __mmask32 tail) {
  const at::BFloat16* w0 = w + r * in;
  __m512 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < full; k += 32) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
    for (int j = 0; j < R; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(w0 + j * in + k), xv);
  }
  if (tail) {
    const __m512bh xv = load_pairs(x + full, tail);
    for (int j = 0; j < R; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], load_pairs(w0 + j * in + full, tail), xv);
  }
  for (int j = 0; j < R; ++j) {
    const float b = bias ? alexnet_bf16::to_float(bias[r + j]) : 0.0f;
    alexnet_bf16::store(y + r + j, _mm512_reduce_add_ps(acc[j]) + b);
  }
}

// Rows [begin, end): kRows at a time, the last few one at a time.
void rows(const at::BFloat16* __restrict w, const at::BFloat16* __restrict x, const at::BFloat16* __restrict bias,
          at::BFloat16* __restrict y, int64_t in, int64_t begin, int64_t end) {
  const int64_t full = in / 32 * 32;
  const __mmask32 tail = in == full ? 0 : static_cast<__mmask32>((uint64_t{1} << (in - full)) - 1);
  int64_t r = begin;
  for (; r + kRows <= end; r += kRows) dot_rows<kRows>(w, x, bias, y, in, r, full, tail);
  for (; r < end; ++r) dot_rows<1>(w, x, bias, y, in, r, full, tail);
}
#endif

at::Tensor gemv(const at::Tensor& weight, const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(ALEXNET_GEMV, "alexnet gemv: built without AVX512-BF16");
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.scalar_type() == at::kBFloat16,
              "alexnet gemv: a 2-D bfloat16 CPU weight expected");
  TORCH_CHECK(x.dim() == 1 && x.size(0) == weight.size(1) && x.scalar_type() == at::kBFloat16,
              "alexnet gemv: x must be a bfloat16 vector of the weight's input size");
  const int64_t out = weight.size(0), in = weight.size(1);
  const at::Tensor w = weight.contiguous(), xv = x.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out && bias->scalar_type() == at::kBFloat16,
                "alexnet gemv: bias must be a bfloat16 vector of the weight's output size");
    b = bias->contiguous();
  }
  auto y = at::empty({out}, w.options());
#if ALEXNET_GEMV
  const at::BFloat16* bp = b.defined() ? b.data_ptr<at::BFloat16>() : nullptr;
  // Whole groups of rows to each thread; a grain of 64 rows (fc6: 1.2 MB of weight) keeps the split coarse.
  at::parallel_for(0, (out + kRows - 1) / kRows, 16, [&](int64_t begin, int64_t end) {
    rows(w.data_ptr<at::BFloat16>(), xv.data_ptr<at::BFloat16>(), bp, y.data_ptr<at::BFloat16>(), in, begin * kRows,
         std::min(end * kRows, out));
  });
#endif
  return y;
}

bool available() { return ALEXNET_GEMV; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "bf16 W·x + b at batch 1 with AVX512-BF16 pair dot products", pybind11::arg("weight"),
        pybind11::arg("x"), pybind11::arg("bias") = pybind11::none());
  m.def("available", &available, "whether this build has the AVX512-BF16 kernel");
}
