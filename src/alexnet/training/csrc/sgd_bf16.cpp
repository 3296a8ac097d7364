// One SGD step over fp32 weights whose gradients come from their bf16 copies, writing the copies back in the same
// pass (`alexnet.training.bf16_copies`): per value, 4 bytes of weight, 2 of gradient and 4 of momentum read, and 4 +
// 4 + 2 written (20), where autocast's two casts (6 + 6) and torch's fused SGD (20) move 32.
//
// torch's SGD (momentum μ, weight decay λ, learning rate ε, no dampening), rounded as torch's fused CPU kernel rounds
// it in its vector loop (measured against torch 2.14's AVX-512 kernel: fused multiply-adds for the decay, Nesterov's
// term and the step, a separate multiply and add for the momentum), so the weights match torch's SGD bit for bit. That
// loop covers every value of a tensor of 16k values; the last n mod 16 of others go through a scalar loop whose
// rounding torch's compiler chose, so the Python side gives this kernel only tensors of 16k values. Built with
// -ffp-contract=off so that the compiler fuses nothing else:
//   g ← g + λ·w;   b ← g on the first step, else μ·b + g;   g ← g + μ·b (Nesterov) or b;   w ← w − ε·g;   c ← bf16(w)
// Only the headers it uses (alexnet.native builds it as it is): with torch/extension.h, every ATen op and the C++
// frontend, the build took 57 s on one core of an AMD EPYC (Zen 3), with these 24.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// bfloat16 <-> float by bit manipulation (round to nearest even, NaN kept a NaN), so the loops vectorise: the
// at::BFloat16 conversions branch per element.
inline float to_float(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
  r = (v != v) ? (u | 0x00400000u) : r;
  return static_cast<uint16_t>(r >> 16);
}

template <bool kDecay, bool kMomentum, bool kNesterov, bool kFirst>
void update(float* __restrict w, const uint16_t* __restrict g, float* __restrict b, uint16_t* __restrict c,
            int64_t n, float lr, float momentum, float decay) {
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float grad = to_float(g[i]);
      const float weight = w[i];
      if (kDecay) grad = std::fma(weight, decay, grad);
      if (kMomentum) {
        const float buf = kFirst ? grad : b[i] * momentum + grad;
        b[i] = buf;
        grad = kNesterov ? std::fma(buf, momentum, grad) : buf;
      }
      const float next = std::fma(grad, -lr, weight);
      w[i] = next;
      c[i] = to_bf16(next);
    }
  });
}

using Update = void (*)(float*, const uint16_t*, float*, uint16_t*, int64_t, float, float, float);

template <bool kDecay, bool kMomentum, bool kNesterov>
Update pick(bool first) {
  return first ? update<kDecay, kMomentum, kNesterov, true> : update<kDecay, kMomentum, kNesterov, false>;
}
template <bool kDecay, bool kMomentum>
Update pick(bool nesterov, bool first) {
  return nesterov ? pick<kDecay, kMomentum, true>(first) : pick<kDecay, kMomentum, false>(first);
}
template <bool kDecay>
Update pick(bool momentum, bool nesterov, bool first) {
  return momentum ? pick<kDecay, true>(nesterov, first) : pick<kDecay, false>(false, first);
}

void check_pair(const at::Tensor& w, const at::Tensor& t, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype, what, " must be a CPU ", c10::toString(dtype), " tensor");
  TORCH_CHECK(t.sizes() == w.sizes() && t.strides() == w.strides(), what, " must have the weight's shape and strides");
}

}  // namespace

// weights (fp32, updated), grads (bf16), buffers (fp32 momentum, updated; ignored when momentum is 0), copies (bf16,
// written), first[i]: whether buffer i is new (it is then set to the gradient, as torch does).
void step(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
          const std::vector<at::Tensor>& buffers, const std::vector<at::Tensor>& copies, const std::vector<bool>& first,
          double lr, double momentum, double weight_decay, bool nesterov) {
  const size_t n = weights.size();
  TORCH_CHECK(grads.size() == n && copies.size() == n && first.size() == n && (momentum == 0 || buffers.size() == n),
              "one gradient, copy, flag (and momentum buffer) per weight");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.is_non_overlapping_and_dense(),
                "weights must be dense CPU float tensors");
    check_pair(w, grads[i], at::kBFloat16, "a gradient");
    check_pair(w, copies[i], at::kBFloat16, "a copy");
    if (momentum != 0) check_pair(w, buffers[i], at::kFloat, "a momentum buffer");
    const bool decay = weight_decay != 0, has_momentum = momentum != 0;
    Update fn = decay ? pick<true>(has_momentum, nesterov, first[i]) : pick<false>(has_momentum, nesterov, first[i]);
    fn(w.data_ptr<float>(), reinterpret_cast<const uint16_t*>(grads[i].data_ptr<at::BFloat16>()),
       has_momentum ? buffers[i].data_ptr<float>() : nullptr,
       reinterpret_cast<uint16_t*>(copies[i].data_ptr<at::BFloat16>()), w.numel(), static_cast<float>(lr),
       static_cast<float>(momentum), static_cast<float>(weight_decay));
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("step", &step, "SGD over fp32 weights from bf16 copies' gradients"); }
