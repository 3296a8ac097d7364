// 16 floats at a time in GCC/Clang vector types (one AVX-512 register, or a pair of AVX2 ones), with loads from and
// stores to float and bfloat16 memory (rounding as bf16.h's store). For loops whose running values must stay in
// registers: written as loops over small arrays, the compiler kept them in memory (a max-pool's forward ran 4x slower).
// Shared by the kernels in this directory (alexnet.native hashes it with each source, so changing it rebuilds them).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace alexnet_vec16 {

typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef uint16_t H16 __attribute__((vector_size(32)));
typedef uint8_t B16 __attribute__((vector_size(16)));

inline F16 load16(const float* p) {
  F16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline F16 load16(const at::BFloat16* p) {
  H16 h;
  std::memcpy(&h, p, sizeof h);
  const U16 u = __builtin_convertvector(h, U16) << 16;
  F16 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline void store16(float* p, F16 v) { std::memcpy(p, &v, sizeof v); }
inline void store16(at::BFloat16* p, F16 v) {  // round to nearest even, NaN kept quiet
  U16 u;
  std::memcpy(&u, &v, sizeof u);
  const U16 r = (v != v) ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  const H16 h = __builtin_convertvector(r >> 16, H16);
  std::memcpy(p, &h, sizeof h);
}

}  // namespace alexnet_vec16
