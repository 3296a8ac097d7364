// kLanes floats at a time in GCC/Clang vector types, with loads from and stores to float and bfloat16 memory
// (rounding as bf16.h's store). For loops whose running values must stay in registers: written as loops over small
// arrays, the compiler kept them in memory (a max-pool's forward ran 4x slower).
// kLanes is one register's width: 16 with AVX-512, 8 otherwise (AVX2). 16-lane vectors on AVX2, two registers each,
// GCC 12 kept on the stack and took apart a lane at a time: the ReLU → max-pool forward took 85 ms instead of 5
// (2 cores of an AMD EPYC Zen 2, float, batch 64, conv1's 64 × 55 × 55), slower than torch's separate ops (18 ms).
// Shared by the kernels in this directory (alexnet.native hashes it with each source, so changing it rebuilds them).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace alexnet_vec {

#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif

typedef float Vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t Vi __attribute__((vector_size(4 * kLanes)));
typedef uint32_t Vu __attribute__((vector_size(4 * kLanes)));
typedef uint16_t Vh __attribute__((vector_size(2 * kLanes)));
typedef uint8_t Vb __attribute__((vector_size(kLanes)));

inline Vf loadv(const float* p) {
  Vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline Vf loadv(const at::BFloat16* p) {
  Vh h;
  std::memcpy(&h, p, sizeof h);
  const Vu u = __builtin_convertvector(h, Vu) << 16;
  Vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline void storev(float* p, Vf v) { std::memcpy(p, &v, sizeof v); }
inline void storev(at::BFloat16* p, Vf v) {  // round to nearest even, NaN kept quiet
  Vu u;
  std::memcpy(&u, &v, sizeof u);
  const Vu r = (v != v) ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  const Vh h = __builtin_convertvector(r >> 16, Vh);
  std::memcpy(p, &h, sizeof h);
}

}  // namespace alexnet_vec
