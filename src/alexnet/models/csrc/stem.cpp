// conv1's input rearranged for its space-to-depth convolution (alexnet.models.layers.StemConv2d) in one pass: each
// s × s block of input pixels, zero-padded by `pad` at the top and left (and as far as the blocks reach at the bottom
// and right), becomes one pixel of s²·C bfloat16 channels ordered (row in the block, column in the block, channel).
//
//   x: (N, C, H, W) float or bfloat16, channels last (N, H, W, C in memory)
//   y: (N, Hb, Wb, s·s·C) bfloat16, y[n, i, j, (u·s + v)·C + c] = x[n, c, i·s + u − pad, j·s + v − pad], 0 outside
//
// torch's ops took two passes (the cast into a zero-filled padded copy, then a 6-D permute of it) over ~100 MB at
// batch 64 and 224 px; each row of s pixels of x here is s·C contiguous values that land contiguous in y.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"

namespace {

using alexnet_bf16::store;
using alexnet_bf16::to_float;

struct Geometry {
  int64_t batch, height, width, channels, s, pad, hb, wb;
};

template <typename T>
void rearrange(const T* __restrict x, at::BFloat16* __restrict y, const Geometry& g) {
  const int64_t c = g.channels, run = g.s * c, cell = g.s * run;  // one block row's values; one block's
  // A row of x in bf16 with the padding's zeros on both sides: each block row is then one copy of run values.
  const int64_t left = g.pad, padded = std::max(g.wb * g.s, left + g.width);
  at::parallel_for(0, g.batch * g.hb, 1, [&](int64_t begin, int64_t end) {
    std::vector<at::BFloat16> line(padded * c, at::BFloat16(0.0f));
    at::BFloat16* __restrict l = line.data();
    for (int64_t row = begin; row < end; ++row) {  // one row of blocks of one image
      const int64_t n = row / g.hb, ib = row % g.hb;
      at::BFloat16* __restrict out = y + row * g.wb * cell;
      for (int64_t u = 0; u < g.s; ++u) {
        const int64_t r = ib * g.s + u - g.pad;
        if (r < 0 || r >= g.height) {
          for (int64_t jb = 0; jb < g.wb; ++jb) std::memset(out + jb * cell + u * run, 0, run * sizeof(at::BFloat16));
          continue;
        }
        const T* __restrict src = x + (n * g.height + r) * g.width * c;
        at::BFloat16* __restrict dst = l + left * c;
        for (int64_t t = 0; t < g.width * c; ++t) store(dst + t, to_float(src[t]));
        for (int64_t jb = 0; jb < g.wb; ++jb)
          std::memcpy(out + jb * cell + u * run, l + jb * run, run * sizeof(at::BFloat16));
      }
    }
  });
}

at::Tensor space_to_depth(const at::Tensor& input, int64_t s, int64_t pad, int64_t hb, int64_t wb) {
  TORCH_CHECK(input.device().is_cpu() && input.dim() == 4, "alexnet space_to_depth: a 4-D CPU tensor expected");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "alexnet space_to_depth: float or bfloat16");
  TORCH_CHECK(s >= 1 && pad >= 0 && hb >= 1 && wb >= 1, "alexnet space_to_depth: bad geometry");
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), s, pad, hb, wb};
  auto y = at::empty({g.batch, hb, wb, s * s * g.channels}, x.options().dtype(at::kBFloat16));
  if (x.scalar_type() == at::kFloat)
    rearrange(x.data_ptr<float>(), y.data_ptr<at::BFloat16>(), g);
  else
    rearrange(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), g);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("space_to_depth", &space_to_depth, "conv1's input as s x s blocks of bf16 channels, zero-padded: (N, Hb, Wb, s*s*C)");
}
