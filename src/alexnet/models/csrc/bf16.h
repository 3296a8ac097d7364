// bfloat16 <-> float by bit manipulation (round to nearest even, NaN kept quiet), written so the compiler vectorises
// the loops that use them; at::BFloat16's own conversions branch per element and kept those loops scalar. Shared by
// the kernels in this directory (alexnet.native hashes it with each source, so changing it rebuilds them).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace alexnet_bf16 {

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

}  // namespace alexnet_bf16
