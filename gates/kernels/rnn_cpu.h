// Shared pieces of the fused CPU recurrences (gru_cpu.cpp, lstm_cpu.cpp, rnn_cpu.cpp).
//
// Mode flags (the table is gates/kernels/modes.py): decay-gate activation
// (kSigmoid, kSst: sigmoid^2 gates, kSstCandidate: also a t |t| candidate, kCumax:
// cumsum(softmax) over the units), a refine
// gate, master gates (kMasterCumax, kMasterSigmoid) on M = H / C units.
// The compiled mode combinations are listed once, in SOEN_MODES.
//
// Speed notes (2-core CPU): the GEMMs are most of the time; the float element
// loops use a branch-free exp/tanh that the compiler vectorizes, compiled for
// several x86-64 ISA levels and picked at load time (function multi-versioning,
// so the binary stays portable; -march=native measured no faster) and split
// over batch rows with torch's OpenMP threads; large buffers come from a caching
// pool (fresh pages cost as much as the arithmetic).
#pragma once

// Only the ATen headers needed (per-operator) and the op-registration header:
// torch/extension.h would triple the first-use compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace soen {

constexpr int kSigmoid = 0;
constexpr int kSst = 1;
constexpr int kCumax = 2;
// kSst with the candidate squared too (t |t|): the bit 4 of the activation code.
constexpr int kSstCandidate = 5;
// Modes whose [0, 1] gates are sigmoid^2.
constexpr bool squares_gates(int act) { return act == kSst || act == kSstCandidate; }
constexpr int kNoMaster = 0;
constexpr int kMasterCumax = 1;
constexpr int kMasterSigmoid = 2;

// The compiled modes: X(activation, refine, master, name).
#define SOEN_MODES(X)                          \
  X(kSigmoid, false, kNoMaster, sigmoid)       \
  X(kSigmoid, true, kNoMaster, refine)         \
  X(kSst, false, kNoMaster, sst)               \
  X(kSstCandidate, false, kNoMaster, sst_candidate) \
  X(kCumax, false, kNoMaster, cumax)           \
  X(kCumax, true, kNoMaster, cumax_refine)     \
  X(kSigmoid, false, kMasterCumax, master_cumax) \
  X(kSigmoid, false, kMasterSigmoid, master_sigmoid)

struct Mode {
  int64_t act;
  bool refine;
  int64_t master;
  int64_t M;  // master units (0 without master gates)
};

#define SOEN_INLINE inline __attribute__((always_inline))

// The element loops never alias (distinct buffers); say so, so that the
// compiler vectorizes them without runtime alias checks (it gives up on those
// when a loop touches many pointers).
#if defined(__clang__)
#define SOEN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define SOEN_IVDEP _Pragma("GCC ivdep")
#else
#define SOEN_IVDEP
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(SOENSIM_NO_CLONES)
#define SOEN_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SOEN_CLONES
#endif

// ---------------------------------------------------------------- math helpers
// Written so that loops over them vectorize on every ISA level: no calls, and
// selects as bit operations (GCC leaves chained ?: on floats as branches unless
// AVX-512 masks are available).
SOEN_INLINE float select_f(bool c, float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, sizeof(ia));
  std::memcpy(&ib, &b, sizeof(ib));
  const int32_t m = -static_cast<int32_t>(c);
  const int32_t r = (ia & m) | (ib & ~m);
  float f;
  std::memcpy(&f, &r, sizeof(f));
  return f;
}

// exp(x) for x <= 0 (float): Cody-Waite range reduction and a degree-6
// polynomial (Cephes coefficients), ~1 ulp; x below -87 is clamped (the result
// then stays a normal float, ~1.6e-38, instead of underflowing).
SOEN_INLINE float exp_neg_f(float x) {
  x = select_f(x < -87.0f, -87.0f, x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: rounds to nearest integer
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the integer in t's mantissa (no float->int conversion: defined for NaN too).
  int32_t ti, mi;
  std::memcpy(&ti, &t, sizeof(ti));
  std::memcpy(&mi, &magic, sizeof(mi));
  const int32_t bits = static_cast<int32_t>(static_cast<uint32_t>(ti - mi + 127) << 23);
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// sigmoid from e = exp(-|x|) <= 1: 1/(1+e) for x >= 0, e/(1+e) below (keeps
// relative accuracy for negative x, never overflows).  NaN propagates.
SOEN_INLINE float sigmoid_f(float x) {
  const float e = exp_neg_f(-std::fabs(x));
  const float inv = 1.0f / (1.0f + e);
  return select_f(x >= 0.0f, inv, e * inv);
}

// tanh: odd minimax polynomial below |x| = 0.625 (relative error ~1e-7),
// sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) above (no cancellation there).
SOEN_INLINE float tanh_f(float x) {
  const float ax = std::fabs(x);
  const float u = x * x;
  float q = 2.2958137560635805e-3f;
  q = q * u + -8.346954360604286e-3f;
  q = q * u + 2.1769952028989792e-2f;
  q = q * u + -5.3959403187036514e-2f;
  q = q * u + 1.3333304226398468e-1f;
  q = q * u + -3.333333432674408e-1f;
  const float small = x + x * u * q;
  const float e = exp_neg_f(-2.0f * ax);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  return select_f(ax < 0.625f, small, big);
}

SOEN_INLINE float act_sigmoid(float x) { return sigmoid_f(x); }
SOEN_INLINE float act_tanh(float x) { return tanh_f(x); }
SOEN_INLINE float act_exp_neg(float x) { return exp_neg_f(x); }
SOEN_INLINE double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
SOEN_INLINE double act_tanh(double x) { return std::tanh(x); }
SOEN_INLINE double act_exp_neg(double x) { return std::exp(x); }

// P, the plain gate from its sigmoid value s (s^2 in sst*), and dP/da.
template <typename T, bool SQ>
SOEN_INLINE T plain(T s) { return SQ ? s * s : s; }
template <typename T, bool SQ>
SOEN_INLINE T plain_grad(T s) { return SQ ? T(2) * s * s * (T(1) - s) : s * (T(1) - s); }
// The candidate from t = tanh(a) (t |t| in sst_candidate), and dcand/da.
template <typename T, bool SQ>
SOEN_INLINE T cand(T t) { return SQ ? t * std::fabs(t) : t; }
template <typename T, bool SQ>
SOEN_INLINE T cand_grad(T t) { return SQ ? T(2) * std::fabs(t) * (T(1) - t * t) : T(1) - t * t; }

// ------------------------------------------------------- row-wide gate pieces
// s = softmax(x + y) over n entries.
template <typename T>
SOEN_INLINE void softmax_row(const T* __restrict x, const T* __restrict y, T* __restrict s,
                             int64_t n) {
  T m = x[0] + y[0];
  for (int64_t j = 1; j < n; ++j) m = std::max(m, x[j] + y[j]);
  T sum = T(0);
  for (int64_t j = 0; j < n; ++j) {
    const T e = act_exp_neg(x[j] + y[j] - m);
    s[j] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

// c = cumsum(s) (c may equal s).
template <typename T>
SOEN_INLINE void cumsum_row(const T* s, T* c, int64_t n) {
  T acc = T(0);
  for (int64_t j = 0; j < n; ++j) {
    acc += s[j];
    c[j] = acc;
  }
}

// da = dL/da of y = cumsum(softmax(a)) from s = softmax(a) and dy = dL/dy:
// u = reverse cumsum of dy, da = s (u - <s, u>).
template <typename T>
SOEN_INLINE void cumax_grad_row(const T* __restrict s, const T* __restrict dy, T* __restrict da,
                                int64_t n) {
  T u = T(0), dot = T(0);
  for (int64_t j = n - 1; j >= 0; --j) {
    u += dy[j];
    da[j] = u;
    dot += s[j] * u;
  }
  for (int64_t j = 0; j < n; ++j) da[j] = s[j] * (da[j] - dot);
}

// Expanded master gates (H = M * C values each) from their saved bases: the
// softmax (MAS == kMasterCumax: mf = cumax, mi = 1 - cumax) or the sigmoid values.
template <typename T, int MAS>
SOEN_INLINE void master_values(const T* s_mf, const T* s_mi, T* mfx, T* mix, int64_t M,
                               int64_t C) {
  T acc_f = T(0), acc_i = T(0);
  for (int64_t m = 0; m < M; ++m) {
    T vf, vi;
    if constexpr (MAS == kMasterCumax) {
      acc_f += s_mf[m];
      acc_i += s_mi[m];
      vf = acc_f;
      vi = T(1) - acc_i;
    } else {
      vf = s_mf[m];
      vi = s_mi[m];
    }
    for (int64_t k = 0; k < C; ++k) {
      mfx[m * C + k] = vf;
      mix[m * C + k] = vi;
    }
  }
}

// Master gates of one row from their pre-activations (gi + gh): bases into
// s_mf / s_mi (M each), expanded values into mfx / mix.
template <typename T, int MAS>
SOEN_INLINE void master_forward(const T* gi, const T* gh, T* s_mf, T* s_mi, T* mfx, T* mix,
                                int64_t M, int64_t C) {
  if constexpr (MAS == kMasterCumax) {
    softmax_row(gi, gh, s_mf, M);
    softmax_row(gi + M, gh + M, s_mi, M);
  } else {
    for (int64_t m = 0; m < M; ++m) {
      s_mf[m] = act_sigmoid(gi[m] + gh[m]);
      s_mi[m] = act_sigmoid(gi[M + m] + gh[M + m]);
    }
  }
  master_values<T, MAS>(s_mf, s_mi, mfx, mix, M, C);
}

// Gradients w.r.t. the master pre-activations (into da, 2M values: forget then
// input) from dL/d(expanded mf, mi); tmp holds 2M values.
template <typename T, int MAS>
SOEN_INLINE void master_backward(const T* s_mf, const T* s_mi, const T* dmfx, const T* dmix,
                                 T* da, T* tmp, int64_t M, int64_t C) {
  T* dmf = tmp;
  T* dmi = tmp + M;
  for (int64_t m = 0; m < M; ++m) {
    T sf = T(0), si = T(0);
    for (int64_t k = 0; k < C; ++k) {
      sf += dmfx[m * C + k];
      si += dmix[m * C + k];
    }
    dmf[m] = sf;
    dmi[m] = (MAS == kMasterCumax) ? -si : si;  // mi = 1 - cumax
  }
  if constexpr (MAS == kMasterCumax) {
    cumax_grad_row(s_mf, dmf, da, M);
    cumax_grad_row(s_mi, dmi, da + M, M);
  } else {
    for (int64_t m = 0; m < M; ++m) {
      da[m] = dmf[m] * s_mf[m] * (T(1) - s_mf[m]);
      da[M + m] = dmi[m] * s_mi[m] * (T(1) - s_mi[m]);
    }
  }
}

// Gradient block computed outside the element loop: add it to the bias
// gradient and, where given, copy it to the GEMM operand dgh.
template <typename T>
SOEN_INLINE void finish_block(const T* dgi, T* dgh, T* db, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    db[j] += dgi[j];
    if (dgh != nullptr) dgh[j] = dgi[j];
  }
}

// ------------------------------------------------------------- time loops
// Element loops of one step are split over batch rows when there is enough
// work (at::parallel_for: OpenMP threads of torch's intra-op pool, the same ones
// the GEMMs use; serial when the extension is built without OpenMP).
constexpr int64_t kGrainElems = 4096;

template <typename F>
void for_row_chunks(int64_t B, int64_t H, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    f(b0, b1, static_cast<int64_t>(at::get_thread_num()));
  });
}

// An uninitialized contiguous tensor, from the buffer pool when it is large.
at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& opt);
// The same, zero-filled.
at::Tensor zeros_big(at::IntArrayRef sizes, const at::TensorOptions& opt);
// t itself when contiguous, else a contiguous copy in a pooled buffer (the
// gradient of out.sum() arrives as an expanded scalar, tens of MB once copied).
at::Tensor contiguous_big(const at::Tensor& t);

// The mode of an op call, checked: a compiled combination, M dividing H.
Mode make_mode(int64_t act, bool refine, int64_t master, int64_t M, int64_t H);
// Rows of gi / w_hh / b_hh: main blocks (GRU 3 or 4, LSTM 4) of H, plus 2 M.
inline int64_t rows_of(int64_t main_blocks, int64_t H, const Mode& m) {
  return main_blocks * H + 2 * m.M;
}

// The ops (registered in rnn_cpu.cpp).
std::vector<at::Tensor> gru_forward(const at::Tensor& gi, const at::Tensor& h0,
                                    const at::Tensor& w_hh, const at::Tensor& b_hh,
                                    int64_t act, bool refine, int64_t master,
                                    int64_t master_units, bool save);
std::vector<at::Tensor> gru_backward(const std::optional<at::Tensor>& grad_out,
                                     const std::optional<at::Tensor>& grad_hT,
                                     const at::Tensor& h0, const at::Tensor& w_hh,
                                     const at::Tensor& out, const at::Tensor& saved,
                                     int64_t act, bool refine, int64_t master,
                                     int64_t master_units);
std::vector<at::Tensor> lstm_forward(const at::Tensor& gi, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh,
                                     const at::Tensor& b_hh, int64_t act, bool refine,
                                     int64_t master, int64_t master_units, bool save);
std::vector<at::Tensor> lstm_backward(const std::optional<at::Tensor>& grad_out,
                                      const std::optional<at::Tensor>& grad_hT,
                                      const std::optional<at::Tensor>& grad_cT,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_hh, const at::Tensor& out,
                                      const at::Tensor& saved, int64_t act, bool refine,
                                      int64_t master, int64_t master_units);

}  // namespace soen
