// Local response normalisation (Krizhevsky et al. 2012, §3.3) fused into one pass over each pixel's channels, forward
// and backward, for channels-last (rows of C contiguous channels) float and bfloat16 tensors on the CPU.
//
//   d_i = k + a · Σ_{j = i-h}^{i+h} x_j²      (h = n / 2; channels beyond a group's edge count as zero)
//   y_i = x_i · d_i^(-β)
//   ∂L/∂x_i = g_i · d_i^(-β) − 2aβ · x_i · Σ_{j = i-h}^{i+h} g_j · x_j · d_j^(-β-1)
//
// The window is symmetric, so the backward's sum runs over the same window. a is the coefficient of the window's
// sum (α under the paper's convention, α/n under Caffe's); the Python side chooses it. The backward recomputes d
// from x rather than reading a saved copy: a few adds per element against 4 bytes written and read again (on a
// 2-core AMD EPYC, conv1's LRN in alexnet_paper at batch 128 trained in 84 ms instead of 126 with d saved).
// Only the headers it uses (alexnet.native builds it as it is): with torch/extension.h, every ATen op and the C++
// frontend, the build took 57 s on one core of an AMD EPYC (Zen 3), with these 24.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// bfloat16 <-> float by bit manipulation (round to nearest even, NaN kept quiet), written so the compiler vectorises
// the loops that use them; at::BFloat16's own conversions branch per element and kept these loops scalar.
inline float to_float(float v) { return v; }
inline float to_float(at::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, float v) { *p = v; }
inline void store(at::BFloat16* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
  r = (v != v) ? (u | 0x00400000u) : r;
  p->x = static_cast<uint16_t>(r >> 16);
}

// d^(-β): for the β = 0.75 every AlexNet uses, two square roots instead of a pow (which does not vectorise).
inline float inv_pow(float d, float beta, bool three_quarters) {
  if (three_quarters) {
    float r = std::sqrt(d);
    return 1.0f / (r * std::sqrt(r));
  }
  return std::pow(d, -beta);
}

// Rows are processed in blocks of about kBlock values, each block as one flat sequence: long loops vectorise with
// little overhead, where a loop per pixel and group (48 channels in alexnet_paper's conv1 towers) spent more time
// entering loops than in them. On a 2-core AMD EPYC, conv1's per-tower LRN in alexnet_paper (bf16, 64 × 96 × 55 × 55)
// ran forward in 7.6-8.1 ms instead of 9.7-10.6; 1,024 to 16,384 values a block measured the same within noise.
constexpr int64_t kBlock = 1024;

// The window sums s of len values in runs of cg (one pixel's channels in one group), sq holding the summands at
// [h, h + len). One flat window sum crosses the boundaries between runs; the h sums either side of each boundary are
// then recomputed from their own run alone, so what lies outside [h, h + len) is read but never kept.
inline void window_sums(const float* __restrict sq, float* __restrict s, int64_t len, int64_t cg, int64_t n) {
  const int64_t h = n / 2;
  for (int64_t i = 0; i < len; ++i) s[i] = sq[i];
  for (int64_t j = 1; j < n; ++j)
    for (int64_t i = 0; i < len; ++i) s[i] += sq[i + j];
  for (int64_t start = 0; start < len; start += cg) {
    for (int64_t e = 0; e < std::min(h, cg); ++e) {
      for (int64_t i : {start + e, start + cg - 1 - e}) {
        const int64_t lo = std::max(i - h, start), hi = std::min(i + h, start + cg - 1);
        float acc = 0.0f;
        for (int64_t j = lo; j <= hi; ++j) acc += sq[j + h];
        s[i] = acc;
      }
    }
  }
}

template <typename T>
void forward_rows(const T* __restrict x, T* __restrict y, int64_t rows, int64_t c, int64_t groups, int64_t n,
                  float a, float beta, float k) {
  const int64_t cg = c / groups, h = n / 2;
  const int64_t block_rows = std::max<int64_t>(1, kBlock / c);
  const bool tq = beta == 0.75f;
  at::parallel_for(0, rows, std::max<int64_t>(block_rows, 64), [&](int64_t begin, int64_t end) {
    std::vector<float> sqbuf(block_rows * c + 2 * h, 0.0f), xbuf(block_rows * c), sbuf(block_rows * c);
    float* __restrict sq = sqbuf.data();
    float* __restrict xf = xbuf.data();
    float* __restrict s = sbuf.data();
    for (int64_t r = begin; r < end; r += block_rows) {
      const int64_t len = std::min(block_rows, end - r) * c;
      const T* __restrict xr = x + r * c;
      for (int64_t i = 0; i < len; ++i) {
        float v = to_float(xr[i]);
        xf[i] = v;
        sq[i + h] = v * v;
      }
      window_sums(sq, s, len, cg, n);
      T* __restrict yr = y + r * c;
      for (int64_t i = 0; i < len; ++i) store(yr + i, xf[i] * inv_pow(k + a * s[i], beta, tq));
    }
  });
}

template <typename T>
void backward_rows(const T* __restrict gy, const T* __restrict x, T* __restrict gx, int64_t rows, int64_t c,
                   int64_t groups, int64_t n, float a, float beta, float k) {
  const int64_t cg = c / groups, h = n / 2;
  const int64_t block_rows = std::max<int64_t>(1, kBlock / c);
  const bool tq = beta == 0.75f;
  const float coef = 2.0f * a * beta;
  at::parallel_for(0, rows, std::max<int64_t>(block_rows, 64), [&](int64_t begin, int64_t end) {
    // t and sq hold their values at [h, h + len), with room for the h either side that window_sums reads.
    const int64_t most = block_rows * c;
    std::vector<float> sqbuf(most + 2 * h, 0.0f), tbuf(most + 2 * h, 0.0f), sbuf(most), xbuf(most), gbuf(most),
        scbuf(most);
    float* __restrict sq = sqbuf.data();
    float* __restrict t = tbuf.data();
    float* __restrict s = sbuf.data();
    float* __restrict xf = xbuf.data();
    float* __restrict gf = gbuf.data();
    float* __restrict scale = scbuf.data();
    for (int64_t r = begin; r < end; r += block_rows) {
      const int64_t len = std::min(block_rows, end - r) * c;
      const T* __restrict xr = x + r * c;
      const T* __restrict gr = gy + r * c;
      for (int64_t i = 0; i < len; ++i) {
        float v = to_float(xr[i]);
        xf[i] = v;
        gf[i] = to_float(gr[i]);
        sq[i + h] = v * v;
      }
      window_sums(sq, s, len, cg, n);
      for (int64_t i = 0; i < len; ++i) {
        float d = k + a * s[i];
        float sc = inv_pow(d, beta, tq);
        scale[i] = sc;
        t[i + h] = gf[i] * xf[i] * sc / d;
      }
      window_sums(t, s, len, cg, n);  // s now holds the window sums of t
      T* __restrict out = gx + r * c;
      for (int64_t i = 0; i < len; ++i) store(out + i, gf[i] * scale[i] - coef * xf[i] * s[i]);
    }
  });
}

void check(const at::Tensor& x, int64_t groups, int64_t n) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet lrn: CPU tensors only");
  TORCH_CHECK(x.dim() == 4, "alexnet lrn: (B, C, H, W) input expected");
  TORCH_CHECK(x.size(1) % groups == 0, "alexnet lrn: channels not divisible by groups");
  TORCH_CHECK(n >= 1 && n % 2 == 1, "alexnet lrn: the window must be odd");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "alexnet lrn: float or bfloat16");
}

}  // namespace

// y in x's dtype, channels last.
at::Tensor lrn_forward(at::Tensor x, int64_t n, double a, double beta, double k, int64_t groups) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t c = x.size(1), rows = x.numel() / std::max<int64_t>(c, 1);
  if (x.scalar_type() == at::kFloat) {
    forward_rows<float>(x.data_ptr<float>(), y.data_ptr<float>(), rows, c, groups, n, a, beta, k);
  } else {
    forward_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), rows, c, groups, n, a, beta,
                               k);
  }
  return y;
}

at::Tensor lrn_backward(at::Tensor gy, at::Tensor x, int64_t n, double a, double beta, double k, int64_t groups) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  gy = gy.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  auto gx = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t c = x.size(1), rows = x.numel() / std::max<int64_t>(c, 1);
  if (x.scalar_type() == at::kFloat) {
    backward_rows<float>(gy.data_ptr<float>(), x.data_ptr<float>(), gx.data_ptr<float>(), rows, c, groups, n, a,
                         beta, k);
  } else {
    backward_rows<at::BFloat16>(gy.data_ptr<at::BFloat16>(), x.data_ptr<at::BFloat16>(),
                                gx.data_ptr<at::BFloat16>(), rows, c, groups, n, a, beta, k);
  }
  return gx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lrn_forward, "fused LRN forward (channels last)");
  m.def("backward", &lrn_backward, "fused LRN backward (channels last), recomputing the denominators");
}
