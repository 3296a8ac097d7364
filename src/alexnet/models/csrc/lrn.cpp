// Local response normalisation (Krizhevsky et al. 2012, §3.3) fused into one pass over each pixel's channels, forward
// and backward, for channels-last (rows of C contiguous channels) float and bfloat16 tensors on the CPU.
//
//   d_i = k + a · Σ_{j = i-h}^{i+h} x_j²      (h = n / 2; channels beyond a group's edge count as zero)
//   y_i = x_i · d_i^(-β)
//   ∂L/∂x_i = g_i · d_i^(-β) − 2aβ · x_i · Σ_{j = i-h}^{i+h} g_j · x_j · d_j^(-β-1)
//
// The window is symmetric, so the backward's sum runs over the same window. a is the coefficient of the window's
// sum (α under the paper's convention, α/n under Caffe's); the Python side chooses it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// d^(-β): for the β = 0.75 every AlexNet uses, two square roots instead of a pow (which does not vectorise).
inline float inv_pow(float d, float beta) {
  if (beta == 0.75f) {
    float r = std::sqrt(d);
    return 1.0f / (r * std::sqrt(r));
  }
  return std::pow(d, -beta);
}

template <typename T>
void forward_rows(const T* x, T* y, float* dout, int64_t rows, int64_t c, int64_t groups, int64_t n, float a,
                  float beta, float k) {
  const int64_t cg = c / groups, h = n / 2;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> sq(cg + 2 * h, 0.0f), s(cg);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t off = r * c + g * cg;
        for (int64_t i = 0; i < cg; ++i) {
          float v = static_cast<float>(x[off + i]);
          sq[i + h] = v * v;
        }
        for (int64_t i = 0; i < cg; ++i) s[i] = 0.0f;
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < cg; ++i) s[i] += sq[i + j];
        for (int64_t i = 0; i < cg; ++i) {
          float d = k + a * s[i];
          if (dout != nullptr) dout[off + i] = d;  // kept for the backward only: inference skips the write
          y[off + i] = static_cast<T>(static_cast<float>(x[off + i]) * inv_pow(d, beta));
        }
      }
    }
  });
}

template <typename T>
void backward_rows(const T* gy, const T* x, const float* dsave, T* gx, int64_t rows, int64_t c, int64_t groups,
                   int64_t n, float a, float beta) {
  const int64_t cg = c / groups, h = n / 2;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> t(cg + 2 * h, 0.0f), tw(cg), scale(cg);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t off = r * c + g * cg;
        for (int64_t i = 0; i < cg; ++i) {
          float d = dsave[off + i];
          float sc = inv_pow(d, beta);
          scale[i] = sc;
          t[i + h] = static_cast<float>(gy[off + i]) * static_cast<float>(x[off + i]) * sc / d;
        }
        for (int64_t i = 0; i < cg; ++i) tw[i] = 0.0f;
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < cg; ++i) tw[i] += t[i + j];
        const float coef = 2.0f * a * beta;
        for (int64_t i = 0; i < cg; ++i) {
          float xi = static_cast<float>(x[off + i]);
          gx[off + i] = static_cast<T>(static_cast<float>(gy[off + i]) * scale[i] - coef * xi * tw[i]);
        }
      }
    }
  });
}

void check(const torch::Tensor& x, int64_t groups, int64_t n) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet lrn: CPU tensors only");
  TORCH_CHECK(x.dim() == 4, "alexnet lrn: (B, C, H, W) input expected");
  TORCH_CHECK(x.size(1) % groups == 0, "alexnet lrn: channels not divisible by groups");
  TORCH_CHECK(n >= 1 && n % 2 == 1, "alexnet lrn: the window must be odd");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "alexnet lrn: float or bfloat16");
}

}  // namespace

// Returns (y, d): y in x's dtype and layout (channels last), d (the denominator before the power) in float32 for the
// backward; with save false (inference), d is empty and never written: a third less memory traffic.
std::vector<torch::Tensor> lrn_forward(torch::Tensor x, int64_t n, double a, double beta, double k, int64_t groups,
                                       bool save) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = torch::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto d = save ? torch::empty_like(x, x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast))
                : torch::empty({0}, x.options().dtype(at::kFloat));
  float* dout = save ? d.data_ptr<float>() : nullptr;
  const int64_t c = x.size(1), rows = x.numel() / std::max<int64_t>(c, 1);
  if (x.scalar_type() == at::kFloat) {
    forward_rows<float>(x.data_ptr<float>(), y.data_ptr<float>(), dout, rows, c, groups, n, a, beta, k);
  } else {
    forward_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), dout, rows, c, groups, n, a,
                               beta, k);
  }
  return {y, d};
}

torch::Tensor lrn_backward(torch::Tensor gy, torch::Tensor x, torch::Tensor d, int64_t n, double a, double beta,
                           int64_t groups) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  gy = gy.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  d = d.contiguous(at::MemoryFormat::ChannelsLast);
  auto gx = torch::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t c = x.size(1), rows = x.numel() / std::max<int64_t>(c, 1);
  if (x.scalar_type() == at::kFloat) {
    backward_rows<float>(gy.data_ptr<float>(), x.data_ptr<float>(), d.data_ptr<float>(), gx.data_ptr<float>(), rows,
                         c, groups, n, a, beta);
  } else {
    backward_rows<at::BFloat16>(gy.data_ptr<at::BFloat16>(), x.data_ptr<at::BFloat16>(), d.data_ptr<float>(),
                                gx.data_ptr<at::BFloat16>(), rows, c, groups, n, a, beta);
  }
  return gx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lrn_forward, "fused LRN forward (channels last)");
  m.def("backward", &lrn_backward, "fused LRN backward (channels last)");
}
