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
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters

#include <cfloat>
#include <cmath>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "vec.h"

namespace {

using alexnet_bf16::store;
using alexnet_bf16::to_float;
using namespace alexnet_vec;

// d^(-β): for the β = 0.75 every AlexNet uses, two square roots instead of a pow (which does not vectorise).
inline float inv_pow(float d, float beta, bool three_quarters) {
  if (three_quarters) {
    float r = std::sqrt(d);
    return 1.0f / (r * std::sqrt(r));
  }
  return std::pow(d, -beta);
}

// The tensor is a sequence of runs of cg values (one pixel's channels in one group), processed in blocks of about
// kBlock values. In a block the squares lie in a buffer with h zeros between runs (stride cg + h), so one flat pass
// of n shifted adds gives every window its own run's clipped sum: long loops that vectorise, no per-run edge cases.
// (Recomputing the h sums either side of each run's edges in scalar loops instead: conv1's per-tower LRN in
// alexnet_paper, 48-channel runs, bf16 at batch 64 on 2 cores of an Intel Xeon with AVX-512 and AMX, forward 9.4 ms
// against 8.5, backward 17.6 against 15.0; with n = 5 in one pass and the powers below, 5.7 and 9.4.)
constexpr int64_t kBlock = 1024;

// s[i] = p[i] + ... + p[i + n - 1] for i < len (p holds len + n - 1 values). The paper's n = 5 in one pass of five
// loads a value; any other n in n passes.
inline void window_sums(const float* __restrict p, float* __restrict s, int64_t len, int64_t n) {
  if (n == 5) {
    for (int64_t i = 0; i < len; ++i) s[i] = p[i] + p[i + 1] + p[i + 2] + p[i + 3] + p[i + 4];
    return;
  }
  for (int64_t i = 0; i < len; ++i) s[i] = p[i];
  for (int64_t j = 1; j < n; ++j)
    for (int64_t i = 0; i < len; ++i) s[i] += p[i + j];
}

// d^(-β) for d = k + a·s[i], in place over len values, and with `over_d` also d^(-β-1) into it (the backward's).
// d is clamped to FLT_MAX first: where the window's squares overflow (|x| above ~1.8e19) d is inf, rsqrt14(inf) = 0
// and the Newton step's inf · 0 is NaN, where the formula gives x · 0 = 0; at FLT_MAX the result is ~1e-29 instead.
// vminps returns its second operand when either is NaN, so a NaN d (a NaN input) stays NaN.
// For β = 0.75 with AVX-512: d^(-3/4) = r²·q with r = 1/√d and q = 1/√r, each an rsqrt14 estimate refined by one
// Newton step (a few float ulps). The two square roots and the division of the scalar form, which the compiler
// vectorises as they are, took more time than the rest of the kernel (conv1's LRN above: forward 8.5 → 7.0 ms).
inline void inv_pows(float* __restrict s, float* __restrict over_d, int64_t len, float a, float k, float beta) {
  const bool tq = beta == 0.75f;
  int64_t i = 0;
#ifdef __AVX512F__
  if (tq) {
    const __m512 va = _mm512_set1_ps(a), vk = _mm512_set1_ps(k), half = _mm512_set1_ps(0.5f),
                 three_halves = _mm512_set1_ps(1.5f), big = _mm512_set1_ps(FLT_MAX);
    auto rsqrt = [&](__m512 v) {  // r ← r·(3/2 − v·r²/2)
      const __m512 r = _mm512_rsqrt14_ps(v);
      const __m512 vr2 = _mm512_mul_ps(_mm512_mul_ps(v, r), r);
      return _mm512_mul_ps(r, _mm512_fnmadd_ps(half, vr2, three_halves));
    };
    for (; i + 16 <= len; i += 16) {
      const __m512 d = _mm512_min_ps(big, _mm512_fmadd_ps(va, _mm512_loadu_ps(s + i), vk));
      const __m512 r = rsqrt(d);
      const __m512 r2 = _mm512_mul_ps(r, r);  // 1/d
      const __m512 p = _mm512_mul_ps(r2, rsqrt(r));
      _mm512_storeu_ps(s + i, p);
      if (over_d) _mm512_storeu_ps(over_d + i, _mm512_mul_ps(p, r2));
    }
  }
#elif defined(__AVX2__) && defined(__FMA__)
  // The same with AVX's rsqrt (a 12-bit estimate, refined by a Newton step). On 2 cores of an AMD EPYC Zen 2 (float,
  // conv1's 64 × 96 × 55 × 55 map, 7 interleaved rounds) against the scalar form: the fused inference stage 1.10×,
  // the LRN forward 1.07×, its backward 1.05× as fast; largest error against float64 4.0e-7 relative (scalar 2.8e-7).
  if (tq) {
    const __m256 va = _mm256_set1_ps(a), vk = _mm256_set1_ps(k), half = _mm256_set1_ps(0.5f),
                 three_halves = _mm256_set1_ps(1.5f), big = _mm256_set1_ps(FLT_MAX);
    auto rsqrt = [&](__m256 v) {  // r ← r·(3/2 − v·r²/2)
      const __m256 r = _mm256_rsqrt_ps(v);
      const __m256 vr2 = _mm256_mul_ps(_mm256_mul_ps(v, r), r);
      return _mm256_mul_ps(r, _mm256_fnmadd_ps(half, vr2, three_halves));
    };
    for (; i + 8 <= len; i += 8) {
      const __m256 d = _mm256_min_ps(big, _mm256_fmadd_ps(va, _mm256_loadu_ps(s + i), vk));
      const __m256 r = rsqrt(d);
      const __m256 r2 = _mm256_mul_ps(r, r);  // 1/d
      const __m256 p = _mm256_mul_ps(r2, rsqrt(r));
      _mm256_storeu_ps(s + i, p);
      if (over_d) _mm256_storeu_ps(over_d + i, _mm256_mul_ps(p, r2));
    }
  }
#endif
  for (; i < len; ++i) {
    const float d = k + a * s[i];
    const float p = inv_pow(d, beta, tq);
    s[i] = p;
    if (over_d) over_d[i] = p / d;
  }
}

// A block's scratch: runs of cg values at stride cg + h in `padded` buffers (zeros between them, never written).
struct Blocks {
  int64_t cg, h, runs, stride;
  Blocks(int64_t c, int64_t groups, int64_t n) : cg(c / groups), h(n / 2) {
    runs = std::max<int64_t>(1, kBlock / std::max<int64_t>(cg, 1));  // no channels: no runs, and no division by 0
    stride = cg + h;
  }
  int64_t padded() const { return runs * stride + 2 * h; }
  int64_t flat() const { return runs * cg; }
};

// A forward block's scratch: the padded squares (zeros between runs, never written), the window sums, the inputs.
struct Scratch {
  std::vector<float> p, s, xf;
  explicit Scratch(const Blocks& b) : p(b.padded(), 0.0f), s(b.padded()), xf(b.flat()) {}
};

#ifdef __AVX512F__
// The paper's case (n = 5, β = 3/4) for runs of a multiple of 16 channels, one run at a time in registers: each
// vector of 16 squares gets its neighbours' two either side by lane shifts across the vectors before and after it
// (zeros beyond the run), so nothing goes through memory but x and the output. The scratch-buffer form below makes
// four passes through L1 a value: on 2 cores of an Intel Xeon with AMX (bf16, batch 64), conv1's inference stage
// (ReLU, per-tower LRN, pool) took 8.5 ms with it and 6.4-6.8 with this, conv2's 4.6 and 3.8.
// The window sums of 5 for the vector cur, from its own lanes and the two nearest of prev and next (lane shifts).
template <int n>
inline Vf shift(Vf hi, Vf lo) {  // lanes n.. of lo followed by hi's first ones
  return reinterpret_cast<Vf>(_mm512_alignr_epi32(reinterpret_cast<__m512i>(hi), reinterpret_cast<__m512i>(lo), n));
}
inline Vf window5(Vf prev, Vf cur, Vf next) {
  return cur + shift<14>(cur, prev) + shift<15>(cur, prev) + shift<1>(next, cur) + shift<2>(next, cur);
}

// Vector j of a run of `vectors` (zeros beyond it), rectified with kRelu: NaN passes, as torch's ReLU lets it.
template <bool kRelu, typename T>
inline Vf run_vector(const T* __restrict x, int64_t j, int64_t vectors) {
  if (j >= vectors) return Vf{};
  const Vf v = loadv(x + 16 * j);
  // vmaxps returns its second operand where either is NaN, or both are zeros: NaN and -0 pass, the rest is max(v, 0).
  return kRelu ? Vf(_mm512_max_ps(Vf{}, v)) : v;
}

// Whether d^(-3/4) is refined by Newton steps (below): for float, not for a bfloat16 result.
template <typename T>
constexpr bool kRefined = !std::is_same_v<T, at::BFloat16>;

inline Vf rsqrt16(Vf v) {  // 1/√v: an rsqrt14 estimate refined by one Newton step, as inv_pows
  const Vf r = _mm512_rsqrt14_ps(v);
  return r * (1.5f - 0.5f * v * r * r);
}

// d^(-3/4) = d^(-1) · d^(1/4) from r = 1/√d and 1/√r. For a bfloat16 output the rsqrt14 estimates as they are
// (relative error under 2^-14 each, ~1.5e-4 in all, against bf16's half step of 2^-9): measured on 8 × 96 × 27 × 27
// values against float64, 0.59% of the outputs one bf16 step from the correctly rounded value instead of 0%, where
// torch's own formula in bf16 is off in 36% (up to 1.2e-2); conv1's fused inference stage ran in 4.5 ms instead of
// 5.4 (bf16, batch 64, 2 cores of an Intel Xeon with AMX). For float, each refined by a Newton step.
template <bool kRefine>
inline Vf inv_pow34(Vf d, Vf* inv_d = nullptr) {
  d = Vf(_mm512_min_ps(Vf{} + FLT_MAX, d));  // overflowed squares, as inv_pows: NaN kept
  const Vf r = kRefine ? rsqrt16(d) : Vf(_mm512_rsqrt14_ps(d));
  if (inv_d) *inv_d = r * r;  // 1/d, for the backward's d^(-7/4)
  return r * r * (kRefine ? rsqrt16(r) : Vf(_mm512_rsqrt14_ps(r)));
}

// The two rows before a 3-row pool window's last one, and where that window's column maxima go.
struct Fold {
  const float* first;
  const float* second;
  float* cols;
};

// With fold (inference's pooled stage): cols[i] ← max(out[i], first[i], second[i]), the column maxima of the window
// whose last row this is, while the value is in a register (vmaxps: rows with a NaN are pooled again the slower way).
// A separate pass over the rows was a fifth of conv1's stage (`perf`).
template <bool kRelu, typename T, typename Out>
inline void normalise_paper(const T* __restrict x, Out* __restrict out, int64_t nr, int64_t cg, float a, float k,
                            const Fold* fold = nullptr) {
  const int64_t vectors = cg / 16;
  const float* __restrict f0 = fold ? fold->first : nullptr;
  const float* __restrict f1 = fold ? fold->second : nullptr;
  float* __restrict f2 = fold ? fold->cols : nullptr;
  for (int64_t r = 0; r < nr; ++r, x += cg, out += cg) {
    Vf xv = run_vector<kRelu>(x, 0, vectors);
    Vf cur = xv * xv;
    Vf pairs_prev = shift<1>(cur, Vf{});  // the pair sums u[-16..-1]: zeros before the run, so sq[0] in lane 15
    for (int64_t j = 0; j < vectors; ++j) {
      const Vf xn = run_vector<kRelu>(x, j + 1, vectors);
      const Vf next = xn * xn;
      // s[i] = u[i-2] + u[i] + sq[i+2] with the pair sums u[i] = sq[i] + sq[i+1]: 3 lane shifts and 3 adds, not 4 and 4
      const Vf pairs = cur + shift<1>(next, cur);
      const Vf sums = pairs + shift<14>(pairs, pairs_prev) + shift<2>(next, cur);
      const Vf v = xv * inv_pow34<kRefined<T>>(k + a * sums);
      storev(out + 16 * j, v);
      if (f2) {
        const int64_t at = r * cg + 16 * j;
        // vmaxps keeps its second operand on a tie of zeros: the earliest row's, whose -0 or +0 torch's pool keeps
        storev(f2 + at, Vf(_mm512_max_ps(v, _mm512_max_ps(loadv(f1 + at), loadv(f0 + at)))));
      }
      pairs_prev = pairs, cur = next, xv = xn;
    }
  }
}

// The backward of the paper's case in registers, as normalise_paper: for each vector of 16 channels, d^(-3/4) and
// t = g·x·d^(-7/4) of the vector after it are computed first, so that the window sum of t (lane shifts across the
// vectors before and after, zeros beyond the run) is at hand. The scratch-buffer form below makes six passes through
// L1 a value: on 2 cores of an Intel Xeon with AMX (bf16, batch 64, with the ReLU) conv1's backward took 10.7-11.5 ms
// with it and 6.1-7.6 with this, conv2's 6.2-6.4 and 3.6-3.7.
template <bool kRelu, typename T>
inline void backward_paper(const T* __restrict gy, const T* __restrict x, T* __restrict gx, int64_t nr, int64_t cg,
                           float a, float k, float coef) {
  const int64_t vectors = cg / 16;
  for (int64_t r = 0; r < nr; ++r, x += cg, gy += cg, gx += cg) {
    auto input = [&](int64_t j) { return run_vector<kRelu>(x, j, vectors); };
    auto grad = [&](int64_t j) { return run_vector<false>(gy, j, vectors); };
    // d^(-3/4) into p and g·x·d^(-7/4) into t for the vector whose squares are sc, between sp and sn
    auto stage = [&](Vf sp, Vf sc, Vf sn, Vf xv, Vf gv, Vf& p, Vf& t) {
      Vf inv_d;
      p = inv_pow34<kRefined<T>>(k + a * window5(sp, sc, sn), &inv_d);
      t = gv * xv * p * inv_d;
    };
    Vf xc = input(0), gc = grad(0), xn = input(1), gn = grad(1), xnn = input(2);
    Vf sp{}, sc = xc * xc, sn = xn * xn, snn = xnn * xnn;
    Vf pc, tc, tp{};
    stage(sp, sc, sn, xc, gc, pc, tc);
    for (int64_t j = 0; j < vectors; ++j) {
      Vf pn{}, tn{};
      if (j + 1 < vectors) stage(sc, sn, snn, xn, gn, pn, tn);
      Vf out = gc * pc - coef * xc * window5(tp, tc, tn);
      if (kRelu) out = xc == 0.0f ? Vf{} : out;  // no gradient where x <= 0, as torch's ReLU backward
      storev(gx + 16 * j, out);
      tp = tc, tc = tn, pc = pn, xc = xn, gc = gn, xn = xnn, gn = grad(j + 2);
      sp = sc, sc = sn, sn = snn;
      xnn = input(j + 3), snn = xnn * xnn;
    }
  }
}
#endif

// One run of cg values from x into xf, rectified with kRelu (NaN passes, as torch's ReLU lets it), and their squares
// into p, kLanes at a time: written as a scalar loop, the ReLU's compare was a branch, mispredicted on about every
// other value (conv1's fused inference stage in alexnet_paper, float, batch 64, on 2 cores of an AMD EPYC Zen 2, AVX2:
// 75% of its time in that loop).
template <bool kRelu, typename T>
inline void rectified_squares(const T* __restrict x, float* __restrict xf, float* __restrict p, int64_t cg) {
  int64_t i = 0;
  for (; i + kLanes <= cg; i += kLanes) {
    Vf v = loadv(x + i);
    if (kRelu) v = (v < 0.0f) ? Vf{} : v;  // NaN and -0 pass, as through torch's ReLU
    storev(xf + i, v);
    storev(p + i, v * v);
  }
  for (; i < cg; ++i) {
    float v = to_float(x[i]);
    if (kRelu) v = v < 0.0f ? 0.0f : v;
    xf[i] = v;
    p[i] = v * v;
  }
}

// The LRN of nr runs from x into out (x's dtype, or float), through w; with kRelu of max(x, 0) (NaN passes, as
// torch's ReLU lets it).
template <bool kRelu, typename T, typename Out>
inline void normalise(const T* __restrict x, Out* __restrict out, int64_t nr, const Blocks& b, Scratch& w, int64_t n,
                      float a, float beta, float k) {
  const int64_t cg = b.cg, h = b.h, stride = b.stride;
#ifdef __AVX512F__
  if (n == 5 && beta == 0.75f && cg % 16 == 0) return normalise_paper<kRelu>(x, out, nr, cg, a, k);
#endif
  float* __restrict p = w.p.data();
  float* __restrict s = w.s.data();
  float* __restrict xf = w.xf.data();
  for (int64_t r = 0; r < nr; ++r) rectified_squares<kRelu>(x + r * cg, xf + r * cg, p + h + r * stride, cg);
  window_sums(p, s, nr * stride, n);
  inv_pows(s, nullptr, nr * stride, a, k, beta);  // s[i] ← d_i^(-β)
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t i = 0; i < cg; ++i) store(out + r * cg + i, xf[r * cg + i] * s[r * stride + i]);
}

template <bool kRelu, typename T>
void forward_runs(const T* __restrict x, T* __restrict y, int64_t total, const Blocks& b, int64_t n, float a,
                  float beta, float k) {
  at::parallel_for(0, total, std::max<int64_t>(b.runs, 64), [&](int64_t begin, int64_t end) {
    Scratch w(b);
    for (int64_t r0 = begin; r0 < end; r0 += b.runs)
      normalise<kRelu>(x + r0 * b.cg, y + r0 * b.cg, std::min(b.runs, end - r0), b, w, n, a, beta, k);
  });
}

// With kRelu, of lrn(relu(x)): x rectified as it is read, and no gradient where x <= 0 (a NaN passes, as through
// torch's ReLU, whose backward masks where its output is <= 0).
template <bool kRelu, typename T>
void backward_runs(const T* __restrict gy, const T* __restrict x, T* __restrict gx, int64_t total, const Blocks& b,
                   int64_t n, float a, float beta, float k) {
  const float coef = 2.0f * a * beta;
  const int64_t cg = b.cg, h = b.h, stride = b.stride;
#ifdef __AVX512F__
  if (n == 5 && beta == 0.75f && cg % 16 == 0) {
    at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
      backward_paper<kRelu>(gy + begin * cg, x + begin * cg, gx + begin * cg, end - begin, cg, a, k, coef);
    });
    return;
  }
#endif
  at::parallel_for(0, total, std::max<int64_t>(b.runs, 64), [&](int64_t begin, int64_t end) {
    // Padded: p the squares, t = g·x·d^(-β-1) (zeros between runs); s the window sums of p, then d^(-β); od
    // d^(-β-1), then the window sums of t.
    std::vector<float> pbuf(b.padded(), 0.0f), tbuf(b.padded(), 0.0f), sbuf(b.padded()), odbuf(b.padded()),
        xbuf(b.flat()), gbuf(b.flat());
    float* __restrict od = odbuf.data();
    float* __restrict p = pbuf.data();
    float* __restrict t = tbuf.data();
    float* __restrict s = sbuf.data();
    float* __restrict xf = xbuf.data();
    float* __restrict gf = gbuf.data();
    for (int64_t r0 = begin; r0 < end; r0 += b.runs) {
      const int64_t nr = std::min(b.runs, end - r0);
      const T* __restrict xr = x + r0 * cg;
      const T* __restrict gr = gy + r0 * cg;
      for (int64_t r = 0; r < nr; ++r) rectified_squares<kRelu>(xr + r * cg, xf + r * cg, p + h + r * stride, cg);
      for (int64_t f = 0; f < nr * cg; ++f) gf[f] = to_float(gr[f]);
      window_sums(p, s, nr * stride, n);
      inv_pows(s, od, nr * stride, a, k, beta);  // s[i] ← d_i^(-β), od[i] ← d_i^(-β-1)
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t i = 0; i < cg; ++i) {
          const int64_t f = r * cg + i;
          t[h + r * stride + i] = gf[f] * xf[f] * od[r * stride + i];
        }
      window_sums(t, od, nr * stride, n);  // od now holds the window sums of t
      T* __restrict out = gx + r0 * cg;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t f = r * cg, q = r * stride;
        // kLanes at a time, as rectified_squares (a scalar loop made the ReLU mask a branch), then the rest.
        int64_t i = 0;
        for (; i + kLanes <= cg; i += kLanes) {
          const Vf xv = loadv(xf + f + i);
          const Vf g = loadv(gf + f + i) * loadv(s + q + i) - coef * xv * loadv(od + q + i);
          storev(out + f + i, kRelu ? (xv == 0.0f ? Vf{} : g) : g);  // rectified to 0 exactly where x <= 0
        }
        for (; i < cg; ++i) {
          const float g = gf[f + i] * s[q + i] - coef * xf[f + i] * od[q + i];
          store(out + f + i, kRelu && xf[f + i] == 0.0f ? 0.0f : g);
        }
      }
    }
  });
}

// Whether any of the len floats at p is NaN: a sum, NaN if a value was (or, rarely, where +inf meets -inf). Four
// sums, not one: one add's latency a vector was 11% of conv1's fused inference stage (`perf`, Xeon with AMX).
inline bool has_nan(const float* __restrict p, int64_t len) {
  Vf s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + 4 * kLanes <= len; i += 4 * kLanes) {
    s0 += loadv(p + i), s1 += loadv(p + i + kLanes), s2 += loadv(p + i + 2 * kLanes), s3 += loadv(p + i + 3 * kLanes);
  }
  for (; i + kLanes <= len; i += kLanes) s0 += loadv(p + i);
  const Vf sum = (s0 + s1) + (s2 + s3);
  float rest = 0.0f;
  for (; i < len; ++i) rest += p[i];
  for (int64_t l = 0; l < kLanes; ++l) rest += sum[l];
  return rest != rest;
}

// Inference: ReLU (optional), LRN and a max-pool (kernel kp, stride sp, no padding, floor) in one pass, as AlexNet's
// conv1 and conv2 stages run them. The LRN rows one output row's window needs are kept in a ring of kp rows of
// floats (W·C values each), so each row is normalised once and only the pooled output (a quarter of the values at
// stride 2) is written: the separate ReLU, LRN and pool each read and wrote the whole map. Rounding to bf16 is
// monotonic, so the max of rounded values equals the rounded max: the output is the unfused layers' own.
template <bool kRelu, typename T>
void pooled_rows(const T* __restrict x, T* __restrict y, int64_t batch, int64_t height, int64_t width,
                    int64_t channels, const Blocks& b, int64_t n, float a, float beta, float k, int64_t kp, int64_t sp,
                    int64_t oh, int64_t ow) {
  const int64_t row = width * channels, row_runs = row / std::max<int64_t>(b.cg, 1);
#ifdef __AVX512F__
  // normalise_paper's case with AlexNet's 3-row pool window: the column maxima are taken as the window's last row is
  // normalised. With has_nan's four sums and columns' unrolled rows: conv1's stage (bf16, batch 64, 2 cores of an
  // Intel Xeon with AMX, processes alternated) 5.0 → 3.4 ms, conv2's 3.2 → 2.1; the fold alone about 4.0 → 3.4.
  const bool fold3 = n == 5 && beta == 0.75f && b.cg > 0 && b.cg % 16 == 0 && kp == 3;
#endif
  at::parallel_for(0, batch * oh, 1, [&](int64_t begin, int64_t end) {
    Scratch w(b);
    std::vector<float> ring(kp * row);
    std::vector<char> ring_nan(kp, 0);  // whether a ring row holds a NaN (its windows then pooled the slower way)
    std::vector<float> cols(row);       // one output row's column maxima (W · C values)
    int64_t image = -1, done = -1;  // the rows of `image` normalised so far: up to `done`
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / oh, oy = item % oh, y0 = oy * sp;
      if (bi != image) image = bi, done = -1;
      bool folded = false;  // whether cols holds the window's column maxima already (normalise_paper's fold)
      for (int64_t yy = std::max(y0, done + 1); yy < y0 + kp; ++yy) {  // LRN of input row yy into its ring slot
        const T* __restrict xr = x + (bi * height + yy) * row;
        float* __restrict out = ring.data() + (yy % kp) * row;
#ifdef __AVX512F__
        // The window's last row (always new: y0 grows with each output row) folded with the two before it.
        if (fold3 && yy == y0 + 2) {
          const Fold f{ring.data() + (y0 % 3) * row, ring.data() + ((y0 + 1) % 3) * row, cols.data()};
          normalise_paper<kRelu>(xr, out, row_runs, b.cg, a, k, &f);
          folded = true;
        }
#endif
        for (int64_t r0 = 0; r0 < row_runs && !folded; r0 += b.runs)  // the fold normalised it already
          normalise<kRelu>(xr + r0 * b.cg, out + r0 * b.cg, std::min(b.runs, row_runs - r0), b, w, n, a, beta, k);
#ifdef __AVX512F__
        ring_nan[yy % kp] = has_nan(out, row);
#endif
      }
      done = std::max(done, y0 + kp - 1);
      T* __restrict yr = y + (bi * oh + oy) * ow * channels;
      // Each column's max over the kp rows first (into cols), then each window's over its kp columns, so a column
      // two windows share is read from the ring once (at kp 3, sp 2: 6 loads an output vector, not 9, and kLanes
      // channels a load rather than a pixel's window at a time, which reached into the ring's three rows for each).
      // The sizes as locals: read through the lambda's captures, the compiler reloaded them after every store.
      auto columns = [&](auto max, bool have_cols) {
        const int64_t ch = channels, pk = kp, step = sp * ch, wide = ow;
        const int64_t used = ((wide - 1) * sp + pk) * ch;  // the values of the columns some window reads
        float* __restrict cm = cols.data();
        const float* __restrict rows[16];  // the window's rows in the ring (kp <= 15, as fused_pool's)
        for (int64_t dy = 0; dy < pk; ++dy) rows[dy] = ring.data() + ((y0 + dy) % pk) * row;
        if (pk == 3) {  // AlexNet's pools: the rows and columns unrolled (the loop tested its count at each, `perf`)
          const float *__restrict r0 = rows[0], *__restrict r1 = rows[1], *__restrict r2 = rows[2];
          if (!have_cols)
            for (int64_t i = 0; i < used; i += kLanes)
              storev(cm + i, max(loadv(r2 + i), max(loadv(r1 + i), loadv(r0 + i))));
          for (int64_t ox = 0; ox < wide; ++ox) {
            const float* __restrict win = cm + ox * step;
            T* __restrict out = yr + ox * ch;
            for (int64_t c0 = 0; c0 < ch; c0 += kLanes)
              storev(out + c0, max(loadv(win + 2 * ch + c0), max(loadv(win + ch + c0), loadv(win + c0))));
          }
          return;
        }
        for (int64_t i = 0; i < used && !have_cols; i += kLanes) {
          Vf m = loadv(rows[0] + i);
          for (int64_t dy = 1; dy < pk; ++dy) m = max(loadv(rows[dy] + i), m);
          storev(cm + i, m);
        }
        for (int64_t ox = 0; ox < wide; ++ox) {
          const float* __restrict win = cm + ox * step;
          for (int64_t c0 = 0; c0 < ch; c0 += kLanes) {
            Vf m = loadv(win + c0);
            for (int64_t dx = 1; dx < pk; ++dx) m = max(loadv(win + dx * ch + c0), m);
            storev(yr + ox * ch + c0, m);
          }
        }
      };
      if (channels % kLanes == 0 && kp <= 16) {
#ifdef __AVX512F__
        // Where the window's rows hold no NaN, one vmaxps a value; it drops a NaN in its first operand, hence the
        // rows' check (a sum: NaN if a value was, or where +inf met -inf).
        bool window_nan = false;
        for (int64_t dy = 0; dy < kp; ++dy) window_nan |= ring_nan[(y0 + dy) % kp] != 0;
        if (!window_nan) {
          columns([](Vf v, Vf m) { return Vf(_mm512_max_ps(v, m)); }, folded);
          continue;
        }
#endif
        // Two compares and a blend a value: NaN propagates, as torch's max-pool does.
        columns([](Vf v, Vf m) { return ((v > m) | (v != v)) ? v : m; }, false);
        continue;
      }
      // The running max in registers (vec.h), kLanes channels at a time: NaN propagates, as torch's max-pool does.
      auto pool_lanes = [&](int64_t ox, int64_t c0) {
        const float* __restrict corner = ring.data() + (ox * sp) * channels + c0;
        const Vf first = loadv(corner + (y0 % kp) * row);
        Vf best = first;
        for (int64_t dy = 0; dy < kp; ++dy) {
          const float* __restrict line = corner + ((y0 + dy) % kp) * row;
          for (int64_t dx = 0; dx < kp; ++dx) {
            const Vf v = loadv(line + dx * channels);
            best = ((v > best) | (v != v)) ? v : best;
          }
        }
        storev(yr + ox * channels + c0, best);
      };
      for (int64_t ox = 0; ox < ow; ++ox) {
        int64_t c0 = 0;
        for (; c0 + kLanes <= channels; c0 += kLanes) pool_lanes(ox, c0);
        for (; c0 < channels; c0 += kLanes) {
          const int64_t cn = std::min<int64_t>(kLanes, channels - c0);
          float best[kLanes];
          for (int64_t c = 0; c < cn; ++c) best[c] = -INFINITY;
          for (int64_t dy = 0; dy < kp; ++dy) {
            const float* __restrict src = ring.data() + ((y0 + dy) % kp) * row + (ox * sp) * channels + c0;
            for (int64_t dx = 0; dx < kp; ++dx)
              for (int64_t c = 0; c < cn; ++c) {
                const float v = src[dx * channels + c];
                best[c] = (v > best[c] || v != v) ? v : best[c];  // NaN propagates, as torch's max-pool does
              }
          }
          for (int64_t c = 0; c < cn; ++c) store(yr + ox * channels + c0 + c, best[c]);
        }
      }
    }
  });
}

template <typename T>
void forward_pooled(const T* x, T* y, int64_t batch, int64_t height, int64_t width, int64_t channels, const Blocks& b,
                    int64_t n, float a, float beta, float k, bool relu, int64_t kp, int64_t sp, int64_t oh,
                    int64_t ow) {
  auto run = relu ? pooled_rows<true, T> : pooled_rows<false, T>;
  run(x, y, batch, height, width, channels, b, n, a, beta, k, kp, sp, oh, ow);
}

void check(const at::Tensor& x, int64_t groups, int64_t n) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet lrn: CPU tensors only");
  TORCH_CHECK(x.dim() == 4, "alexnet lrn: (B, C, H, W) input expected");
  TORCH_CHECK(x.size(1) % groups == 0, "alexnet lrn: channels not divisible by groups");
  TORCH_CHECK(n >= 1 && n % 2 == 1, "alexnet lrn: the window must be odd");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "alexnet lrn: float or bfloat16");
}

}  // namespace

// y = lrn(x), or lrn(relu(x)) with relu, in x's dtype, channels last.
at::Tensor lrn_forward(at::Tensor x, int64_t n, double a, double beta, double k, int64_t groups, bool relu) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Blocks blocks(x.size(1), groups, n);
  const int64_t runs = x.numel() / std::max<int64_t>(blocks.cg, 1);
  if (x.scalar_type() == at::kFloat) {
    (relu ? forward_runs<true, float> : forward_runs<false, float>)(x.data_ptr<float>(), y.data_ptr<float>(), runs,
                                                                    blocks, n, a, beta, k);
  } else {
    using B = at::BFloat16;
    (relu ? forward_runs<true, B> : forward_runs<false, B>)(x.data_ptr<B>(), y.data_ptr<B>(), runs, blocks, n, a,
                                                            beta, k);
  }
  return y;
}

// ∂L/∂x of lrn_forward (with the same relu), recomputing the denominators from x.
at::Tensor lrn_backward(at::Tensor gy, at::Tensor x, int64_t n, double a, double beta, double k, int64_t groups,
                        bool relu) {
  check(x, groups, n);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  gy = gy.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  auto gx = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Blocks blocks(x.size(1), groups, n);
  const int64_t runs = x.numel() / std::max<int64_t>(blocks.cg, 1);
  if (x.scalar_type() == at::kFloat) {
    (relu ? backward_runs<true, float> : backward_runs<false, float>)(
        gy.data_ptr<float>(), x.data_ptr<float>(), gx.data_ptr<float>(), runs, blocks, n, a, beta, k);
  } else {
    using B = at::BFloat16;
    (relu ? backward_runs<true, B> : backward_runs<false, B>)(gy.data_ptr<B>(), x.data_ptr<B>(), gx.data_ptr<B>(),
                                                              runs, blocks, n, a, beta, k);
  }
  return gx;
}

// Inference only (no gradient): y = max_pool(lrn(relu(x))) in x's dtype, channels last.
at::Tensor lrn_pool_forward(at::Tensor x, int64_t n, double a, double beta, double k, int64_t groups, bool relu,
                            int64_t kp, int64_t sp) {
  check(x, groups, n);
  TORCH_CHECK(kp >= 1 && sp >= 1 && x.size(2) >= kp && x.size(3) >= kp,
              "alexnet lrn_pool: the pool window is larger than the map");
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t oh = (height - kp) / sp + 1, ow = (width - kp) / sp + 1;
  auto y = at::empty({batch, channels, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Blocks blocks(channels, groups, n);
  if (batch == 0 || channels == 0) return y;
  if (x.scalar_type() == at::kFloat) {
    forward_pooled<float>(x.data_ptr<float>(), y.data_ptr<float>(), batch, height, width, channels, blocks, n, a, beta,
                          k, relu, kp, sp, oh, ow);
  } else {
    forward_pooled<at::BFloat16>(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), batch, height, width,
                                 channels, blocks, n, a, beta, k, relu, kp, sp, oh, ow);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lrn_forward, "fused LRN forward, of the input's ReLU with relu (channels last)");
  m.def("backward", &lrn_backward, "its backward (channels last), recomputing the denominators");
  m.def("pool_forward", &lrn_pool_forward, "inference: ReLU, LRN and max-pool in one pass (channels last)");
}
