// A max-pool (square window k, stride s, padding p ≤ k/2, floor mode), optionally of the ReLU of its input, in one
// pass, forward and backward, for float and bfloat16 maps in channels-last layout (N, H, W, C); and, for inference, the
// pooled values alone (`values`: no argmax to keep, so the running max is one vmaxps a value on AVX-512).
//
//   forward:  y[n, i, j, c] = relu(max over the window of x)      (= max of relu(x): the ReLU is monotonic)
//             a[n, i, j, c] = the window position of that max, 0 .. k²−1, or 255 where no gradient flows back
//   backward: ∂L/∂x at each window's argmax += ∂L/∂y, in the order of the windows
//
// torch runs the ReLU and the pool, and their backwards, as four passes: the ReLU writes its whole output and keeps it
// for its backward, the pool keeps int64 indices, and its backward zero-fills and scatters the whole map before the
// ReLU's backward reads it again. Here the forward reads x once and writes the pooled map and one byte per pooled
// value; the backward reads the pooled gradient and those bytes and writes ∂L/∂x once.
//
// The argmax is torch's: the first maximum in the window's row-major order, NaN taken over any number (a later NaN over
// an earlier one), and the window's first pixel inside the map when every value is −∞ (the padding never wins). With
// the ReLU a window whose maximum is not positive passes no gradient back, as torch's ReLU backward masks where its
// output is <= 0 (so a NaN passes).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"
#include "vec.h"

namespace {

using alexnet_bf16::store;
using alexnet_bf16::to_float;
using namespace alexnet_vec;

constexpr uint8_t kNone = 255;  // no gradient through this pooled value

struct Shape {
  int64_t batch, height, width, channels, k, s, pad, out_h, out_w;
};

// The map (N, C, h, w) that t, a map or its pooled gradient, belongs to.
Shape shape_of(const at::Tensor& t, int64_t h, int64_t w, int64_t k, int64_t s, int64_t pad) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4, "alexnet relu_max_pool: a 4-D CPU tensor expected");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
              "alexnet relu_max_pool: float or bfloat16");
  TORCH_CHECK(k >= 1 && s >= 1 && k * k < kNone, "alexnet relu_max_pool: window 1..15, stride >= 1");
  TORCH_CHECK(pad >= 0 && 2 * pad <= k, "alexnet relu_max_pool: padding at most half the window");
  TORCH_CHECK(h + 2 * pad >= k && w + 2 * pad >= k, "alexnet relu_max_pool: the window is larger than the map");
  return {t.size(0), h, w, t.size(1), k, s, pad, (h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1};
}

// The part of window (i, j) inside the map (padding counts as −∞: never the maximum): rows top + [u0, u1), columns
// left + [v0, v1), where (top, left) is the window's corner in the padded frame shifted back by the padding.
struct Window {
  int64_t top, left, u0, u1, v0, v1;
};

inline Window window_at(const Shape& d, int64_t i, int64_t j) {
  const int64_t top = i * d.s - d.pad, left = j * d.s - d.pad;
  return {top, left, std::max<int64_t>(0, -top), std::min(d.k, d.height - top), std::max<int64_t>(0, -left),
          std::min(d.k, d.width - left)};
}

// One window's max and argmax for kLanes channels of the image at x, its pooled value stored at y and its position
// at arg.
template <bool kRelu, typename T>
inline void window_lanes(const T* x, int64_t row_stride, int64_t c, int64_t k, const Window& w, T* __restrict y,
                     uint8_t* __restrict arg) {
  // offsets from the window's corner, which may lie in the padding (only its inside is read: each sum is >= 0)
  const int64_t corner = w.top * row_stride + w.left * c;
  Vf b = loadv(x + (corner + w.u0 * row_stride + w.v0 * c));
  Vi a = Vi{} + static_cast<int32_t>(w.u0 * k + w.v0);  // torch starts from the first pixel inside the map
  for (int64_t u = w.u0; u < w.u1; ++u) {
    for (int64_t v = w.v0; v < w.v1; ++v) {
      const Vf f = loadv(x + (corner + u * row_stride + v * c));
      const Vi take = (f > b) | (f != f);  // the first maximum; NaN over any number, as torch's pool
      b = take ? f : b;
      a = take ? static_cast<int32_t>(u * k + v) : a;
    }
  }
  // NaN passes, forward and back, as through torch's ReLU (its backward masks where the output is <= 0)
  const Vi pass = kRelu ? (b > 0.0f) | (b != b) : Vi{} - 1;
  storev(y, pass ? b : Vf{});
  const Vb where = __builtin_convertvector(pass ? a : static_cast<int32_t>(kNone), Vb);
  std::memcpy(arg, &where, sizeof where);
}

// One window's pooled value for kLanes channels, no argmax (inference), torch's value: NaN propagates.
template <bool kRelu, typename T>
inline void values_lanes(const T* x, int64_t row_stride, int64_t c, const Window& w, T* __restrict y) {
  const int64_t corner = w.top * row_stride + w.left * c;
  const T* first = x + (corner + w.u0 * row_stride + w.v0 * c);
#ifdef __AVX512F__
  // One vmaxps a value, and a sum that is NaN if a value was (vmaxps drops a NaN in its first operand). Numbers sum to
  // NaN only for +inf and -inf in one window; such a window, as one with a NaN, is pooled again below.
  Vf fast = loadv(first), sum{};
  for (int64_t u = w.u0; u < w.u1; ++u)
    for (int64_t v = w.v0; v < w.v1; ++v) {
      const Vf f = loadv(x + (corner + u * row_stride + v * c));
      fast = _mm512_max_ps(f, fast);  // f > fast ? f : fast
      sum += f;
    }
  if (!_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q))  // the ReLU: max with +0 (so -0 becomes +0, as below)
    return storev(y, kRelu ? Vf(_mm512_max_ps(fast, Vf{})) : fast);
#endif
  Vf b = loadv(first);
  for (int64_t u = w.u0; u < w.u1; ++u)
    for (int64_t v = w.v0; v < w.v1; ++v) {
      const Vf f = loadv(x + (corner + u * row_stride + v * c));
      b = ((f > b) | (f != f)) ? f : b;
    }
  const Vi pass = kRelu ? (b > 0.0f) | (b != b) : Vi{} - 1;
  storev(y, pass ? b : Vf{});
}

// The same for the channels of a map narrower than kLanes, one at a time.
template <bool kRelu, typename T>
inline void window1(const T* x, int64_t row_stride, int64_t c, int64_t k, const Window& w, int64_t lanes,
                    T* __restrict y, uint8_t* __restrict arg) {
  const int64_t corner = w.top * row_stride + w.left * c;
  for (int64_t l = 0; l < lanes; ++l) {
    float b = to_float(x[corner + w.u0 * row_stride + w.v0 * c + l]);
    int32_t a = static_cast<int32_t>(w.u0 * k + w.v0);
    for (int64_t u = w.u0; u < w.u1; ++u) {
      for (int64_t v = w.v0; v < w.v1; ++v) {
        const float f = to_float(x[corner + u * row_stride + v * c + l]);
        if (f > b || f != f) b = f, a = static_cast<int32_t>(u * k + v);
      }
    }
    const bool pass = !kRelu || b > 0.0f || b != b;
    store(y + l, pass ? b : 0.0f);
    arg[l] = static_cast<uint8_t>(pass ? a : kNone);
  }
}

// kArgmax: also each pooled value's position in its window, at arg (else arg is unused: inference).
template <bool kRelu, bool kArgmax, typename T>
void forward_rows(const T* __restrict x, T* __restrict y, uint8_t* __restrict arg, const Shape& d) {
  const int64_t c = d.channels, row_stride = d.width * c, full = c / kLanes * kLanes;
  at::parallel_for(0, d.batch * d.out_h, 1, [&](int64_t begin, int64_t end) {
    uint8_t unused[kLanes];  // the tail's positions, without kArgmax
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.out_h, i = row % d.out_h;
      for (int64_t j = 0; j < d.out_w; ++j) {
        const Window w = window_at(d, i, j);
        const T* image = x + n * d.height * row_stride;
        const int64_t o = (row * d.out_w + j) * c;
        const auto lanes = [&](int64_t ch) {
          if constexpr (kArgmax)
            window_lanes<kRelu>(image + ch, row_stride, c, d.k, w, y + o + ch, arg + o + ch);
          else
            values_lanes<kRelu>(image + ch, row_stride, c, w, y + o + ch);
        };
        for (int64_t ch = 0; ch < full; ch += kLanes) lanes(ch);
        // The channels past the last multiple of kLanes: as the last kLanes channels, which overlap some pooled
        // already (their values and positions are written again, the same), where the map has that many. One at a
        // time, each took ~25 times a vector's channel: conv1's 24 channels in the Fashion-MNIST recipe pooled in
        // 3.6 ms instead of 0.5 (batch 128, AVX-512), a tenth of its training step.
        if (full < c && c >= kLanes)
          lanes(c - kLanes);
        else
          window1<kRelu>(image + full, row_stride, c, d.k, w, c - full, y + o + full, kArgmax ? arg + o + full : unused);
      }
    }
  });
}

template <typename T>
void backward_images(const T* __restrict gy, const uint8_t* __restrict arg, T* __restrict gx, const Shape& d) {
  const int64_t c = d.channels, plane = d.height * d.width * c;
  at::parallel_for(0, d.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(plane);  // one image's ∂L/∂x in float: the windows overlap
    float* __restrict acc = sum.data();
    for (int64_t n = begin; n < end; ++n) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int64_t i = 0; i < d.out_h; ++i) {
        for (int64_t j = 0; j < d.out_w; ++j) {
          const int64_t o = ((n * d.out_h + i) * d.out_w + j) * c;
          const Window w = window_at(d, i, j);
          const int64_t corner = (w.top * d.width + w.left) * c;  // as the forward's
          int64_t ch = 0;
          for (; ch + kLanes <= c; ch += kLanes) {  // kLanes channels in registers, as the forward's window_lanes
            const Vf g = loadv(gy + o + ch);
            Vb bytes;
            std::memcpy(&bytes, arg + o + ch, sizeof bytes);
            const Vi a = __builtin_convertvector(bytes, Vi);
            for (int64_t u = w.u0; u < w.u1; ++u) {
              for (int64_t v = w.v0; v < w.v1; ++v) {
                float* px = acc + (corner + (u * d.width + v) * c + ch);
                storev(px, loadv(px) + (a == static_cast<int32_t>(u * d.k + v) ? g : Vf{}));
              }
            }
          }
          for (; ch < c; ++ch) {
            const uint8_t a = arg[o + ch];
            if (a != kNone) acc[corner + (a / d.k * d.width + a % d.k) * c + ch] += to_float(gy[o + ch]);
          }
        }
      }
      T* __restrict out = gx + n * plane;
      for (int64_t e = 0; e < plane; ++e) store(out + e, acc[e]);
    }
  });
}

at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

template <bool kArgmax, typename T>
void forward_typed(const at::Tensor& x, at::Tensor& y, uint8_t* arg, const Shape& d, bool relu) {
  (relu ? forward_rows<true, kArgmax, T> : forward_rows<false, kArgmax, T>)(x.data_ptr<T>(), y.data_ptr<T>(), arg, d);
}

// [y (x's dtype, channels last)], and with_argmax: [y, argmax (uint8, y's shape and layout)]
std::vector<at::Tensor> pool(const at::Tensor& input, int64_t k, int64_t s, int64_t pad, bool relu, bool with_argmax) {
  const Shape d = shape_of(input, input.size(2), input.size(3), k, s, pad);
  const at::Tensor x = channels_last(input);
  const auto layout = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  std::vector<at::Tensor> out{at::empty({d.batch, d.channels, d.out_h, d.out_w}, layout)};
  const bool f32 = x.scalar_type() == at::kFloat;
  if (!with_argmax) {
    (f32 ? forward_typed<false, float> : forward_typed<false, at::BFloat16>)(x, out[0], nullptr, d, relu);
    return out;
  }
  out.push_back(at::empty({d.batch, d.channels, d.out_h, d.out_w}, layout.dtype(at::kByte)));
  uint8_t* arg = out[1].data_ptr<uint8_t>();
  (f32 ? forward_typed<true, float> : forward_typed<true, at::BFloat16>)(x, out[0], arg, d, relu);
  return out;
}

}  // namespace

// [y (x's dtype, channels last), argmax (uint8, y's shape and layout)]
std::vector<at::Tensor> relu_pool_forward(const at::Tensor& input, int64_t k, int64_t s, int64_t pad, bool relu) {
  return pool(input, k, s, pad, relu, true);
}

// y alone, for inference
at::Tensor relu_pool_values(const at::Tensor& input, int64_t k, int64_t s, int64_t pad, bool relu) {
  return pool(input, k, s, pad, relu, false)[0];
}

// ∂L/∂x, (N, C, height, width) in the gradient's dtype, channels last
at::Tensor relu_pool_backward(const at::Tensor& grad, const at::Tensor& argmax, int64_t height, int64_t width,
                              int64_t k, int64_t s, int64_t pad) {
  const at::Tensor g = channels_last(grad), a = channels_last(argmax);
  const Shape d = shape_of(g, height, width, k, s, pad);
  TORCH_CHECK(g.size(2) == d.out_h && g.size(3) == d.out_w && a.sizes() == g.sizes() &&
                  a.scalar_type() == at::kByte,
              "alexnet relu_max_pool: the gradient and argmax do not match the map");
  auto gx = at::empty({d.batch, d.channels, height, width}, g.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (g.scalar_type() == at::kFloat) {
    backward_images(g.data_ptr<float>(), a.data_ptr<uint8_t>(), gx.data_ptr<float>(), d);
  } else {
    using B = at::BFloat16;
    backward_images(g.data_ptr<B>(), a.data_ptr<uint8_t>(), gx.data_ptr<B>(), d);
  }
  return gx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &relu_pool_forward, "max-pool of (the ReLU of) a channels-last map: [y, argmax in the window]");
  m.def("backward", &relu_pool_backward, "its backward from the argmax: grad x");
  m.def("values", &relu_pool_values, "inference: the max-pool of (the ReLU of) a channels-last map, y alone");
  m.def("lanes", [] { return kLanes; }, "the channels a vector holds (vec.h): one register of this CPU");
}
