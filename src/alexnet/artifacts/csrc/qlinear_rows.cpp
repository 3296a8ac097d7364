// An int8 fully connected layer for a few rows of input (batch 1 to 8), streaming the weights once: on CPUs without
// VNNI, oneDNN runs u8 × s8 matmuls through its general GEMM, which at one row used a fifth of the memory bandwidth
// (fc6 of AlexNet, 9216 → 4096, 37.7 MB of int8 weights, on a 2-core AVX2 AMD EPYC: 6.5 ms, where streaming them
// takes 1.3).
//
//   y[m, n] = sx · sw[n] · Σ_k (x[m, k] − zx) · w[n, k]  + b[n]
//
// x: uint8 activations with one scale sx and zero point zx (per tensor); w: int8 weights, symmetric, one scale per
// output channel (per channel, zero point 0). x − zx is widened to int16 once per call, then each 16 weights are
// widened to int16 and multiplied in pairs into int32 (vpmaddwd): exact, where the u8 × s8 byte multiply-add
// (vpmaddubsw) saturates its int16 pair sums. A lane sums at most 2 · 255 · 128 per step over K / 16 steps: no int32
// overflow below K = 1 M.
// Only the headers it uses (alexnet.native builds it as it is): with torch/extension.h, every ATen op and the C++
// frontend, the build took 57 s on one core of an AMD EPYC (Zen 3), with these 24.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <cstdint>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kMaxRows = 8;

template <int M>
void rows(const int16_t* xs, int64_t kp, const int8_t* w, int64_t k, const float* sw, const float* bias, float sx,
          float* y, int64_t n_total, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    const int8_t* wr = w + n * k;
    int32_t sum[M] = {};
    int64_t i = 0;
#if defined(__AVX2__)
    __m256i acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_si256();
    for (; i + 16 <= k; i += 16) {
      const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + i)));
      for (int m = 0; m < M; ++m) {
        const __m256i x16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + m * kp + i));
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(x16, w16));
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[m]), _mm256_extracti128_si256(acc[m], 1));
      s = _mm_hadd_epi32(s, s);
      s = _mm_hadd_epi32(s, s);
      sum[m] = _mm_cvtsi128_si32(s);
    }
#endif
    for (; i < k; ++i)
      for (int m = 0; m < M; ++m) sum[m] += static_cast<int32_t>(xs[m * kp + i]) * wr[i];
    const float scale = sx * sw[n], b = bias ? bias[n] : 0.0f;
    for (int m = 0; m < M; ++m) y[m * n_total + n] = static_cast<float>(sum[m]) * scale + b;
  }
}

using Rows = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, const float*, const float*, float, float*,
                      int64_t, int64_t, int64_t);
constexpr Rows kRows[kMaxRows] = {rows<1>, rows<2>, rows<3>, rows<4>, rows<5>, rows<6>, rows<7>, rows<8>};

}  // namespace

// x (M, K) uint8, w (N, K) int8, sw (N,) float, bias (N,) float or none → y (M, N) float.
at::Tensor forward(at::Tensor x, double sx, int64_t zx, at::Tensor w, at::Tensor sw,
                   c10::optional<at::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kByte && x.device().is_cpu(), "alexnet qlinear: uint8 (M, K) x");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.size(1) == x.size(1), "alexnet qlinear: int8 (N, K) w");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "alexnet qlinear: 1 to ", kMaxRows, " rows");
  const int64_t m_rows = x.size(0), k = x.size(1), n = w.size(0);
  TORCH_CHECK(sw.numel() == n && sw.scalar_type() == at::kFloat, "alexnet qlinear: one float scale per output");
  x = x.contiguous();
  w = w.contiguous();
  sw = sw.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == n, "alexnet qlinear: one bias per output");
  }
  // x − zx, widened once: M × K int16 (M = 1, K = 9216: 18 KB, in cache for every row of w), rows 16-aligned.
  const int64_t kp = (k + 15) / 16 * 16;
  std::vector<int16_t> xs(m_rows * kp, 0);
  const uint8_t* xp = x.data_ptr<uint8_t>();
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t i = 0; i < k; ++i) xs[m * kp + i] = static_cast<int16_t>(xp[m * k + i]) - static_cast<int16_t>(zx);
  auto y = at::empty({m_rows, n}, x.options().dtype(at::kFloat));
  const Rows run = kRows[m_rows - 1];
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* swp = sw.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // 16 output rows a task at least: 16 × 9216 bytes of weights, enough to amortise a task.
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    run(xs.data(), kp, wp, k, swp, bp, static_cast<float>(sx), yp, n, begin, end);
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("forward", &forward, "int8 fully connected layer for 1-8 rows"); }
