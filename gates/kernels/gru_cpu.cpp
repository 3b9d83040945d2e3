// Fused GRU recurrence for the CPU: the time loop runs here, in compiled code.
//
// Semantics (torch.nn.GRU form, see gates/kernels/generic.py for the reference):
//   gh_t = h_{t-1} W_hh^T + b_hh            one GEMM per step, blocks r, z, n[, rho]
//   a_r  = gi_r + gh_r,  a_z = gi_z + gh_z,  a_n = gi_n + r * gh_n
//   sigmoid: r = s(a_r),   z = s(a_z),                          n = tanh(a_n)
//   refine : r = s(a_r),   z = 2 p f + (1 - 2 p) f^2,  f = s(a_z), p = s(a_rho),
//            n = tanh(a_n)
//   sst    : r = s(a_r)^2, z = s(a_z)^2,                        n = tanh(a_n) |tanh(a_n)|
//   h_t = (1 - z) n + z h_{t-1}
//
// Forward saves, per step and batch row, K*H values [s_r, s_z, tanh(a_n), gh_n(, s_rho)]
// (K = 4, or 5 for refine); backward recomputes everything else from them.
// Backward runs the loop in reverse with one GEMM per step (dh_{t-1} += d_gh_t W_hh)
// and forms dW_hh with one GEMM over all steps after the loop.
//
// The float element loops use a branch-free exp/tanh that the compiler vectorizes;
// on x86-64 with GCC they are compiled for several ISA levels and picked at load
// time (function multi-versioning), so the binary stays portable.

// Only the ATen headers it needs (per-operator) and the op-registration header:
// torch/extension.h would triple the first-use compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

namespace {

constexpr int kSigmoid = 0;
constexpr int kRefine = 1;
constexpr int kSst = 2;

constexpr int64_t gates_of(int mode) { return mode == kRefine ? 4 : 3; }
constexpr int64_t saved_of(int mode) { return mode == kRefine ? 5 : 4; }

#define SOEN_INLINE inline __attribute__((always_inline))

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(SOENSIM_NO_CLONES)
#define SOEN_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SOEN_CLONES
#endif

// ---------------------------------------------------------------- math helpers
// exp for float: Cody-Waite range reduction + degree-6 polynomial (Cephes
// coefficients), ~1 ulp on the clamped range; written without calls or branches
// so loops over it vectorize.
SOEN_INLINE float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: rounds to nearest integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

SOEN_INLINE float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// tanh for float: odd minimax polynomial below |x| = 0.625 (relative error
// ~1e-7), (1 - e) / (1 + e) with e = exp(-2|x|) above (no cancellation there).
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
  const float e = exp_f(-2.0f * ax);
  float big = (1.0f - e) / (1.0f + e);
  big = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : big;
}

SOEN_INLINE float act_sigmoid(float x) { return sigmoid_f(x); }
SOEN_INLINE float act_tanh(float x) { return tanh_f(x); }
SOEN_INLINE double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
SOEN_INLINE double act_tanh(double x) { return std::tanh(x); }

// ---------------------------------------------------------------- row kernels
// One batch row, H units.  gi, gh: G*H; hp, hn: H; sv: K*H.
template <typename T, int M, bool SAVE>
SOEN_INLINE void fwd_row(const T* __restrict gi, const T* __restrict gh,
                         const T* __restrict hp, T* __restrict hn,
                         T* __restrict sv, int64_t H) {
  const T* gir = gi;
  const T* giz = gi + H;
  const T* gin = gi + 2 * H;
  const T* gip = gi + 3 * H;
  const T* ghr = gh;
  const T* ghz = gh + H;
  const T* ghn = gh + 2 * H;
  const T* ghp = gh + 3 * H;
  T* s_r = sv;
  T* s_z = sv + H;
  T* s_n = sv + 2 * H;
  T* s_g = sv + 3 * H;
  T* s_p = sv + 4 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T sr = act_sigmoid(gir[j] + ghr[j]);
    const T sz = act_sigmoid(giz[j] + ghz[j]);
    const T gn = ghn[j];
    const T r = (M == kSst) ? sr * sr : sr;
    const T tn = act_tanh(gin[j] + r * gn);
    const T n = (M == kSst) ? tn * std::fabs(tn) : tn;
    T z;
    if constexpr (M == kRefine) {
      const T sp = act_sigmoid(gip[j] + ghp[j]);
      z = T(2) * sp * sz + (T(1) - T(2) * sp) * sz * sz;
      if constexpr (SAVE) s_p[j] = sp;
    } else {
      z = (M == kSst) ? sz * sz : sz;
    }
    hn[j] = n + z * (hp[j] - n);
    if constexpr (SAVE) {
      s_r[j] = sr;
      s_z[j] = sz;
      s_n[j] = tn;
      s_g[j] = gn;
    }
  }
}

// dh: gradient into h_t (H); hp: h_{t-1}; dprev: gradient of the loss w.r.t. the
// output at t-1 or nullptr; writes dgi, dgh (G*H) and dnext = dh*z + dprev (H).
template <typename T, int M>
SOEN_INLINE void bwd_row(const T* __restrict dh, const T* __restrict hp,
                         const T* __restrict sv, const T* __restrict dprev,
                         T* __restrict dgi, T* __restrict dgh,
                         T* __restrict dnext, int64_t H) {
  const T* s_r = sv;
  const T* s_z = sv + H;
  const T* s_n = sv + 2 * H;
  const T* s_g = sv + 3 * H;
  const T* s_p = sv + 4 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T sr = s_r[j];
    const T sz = s_z[j];
    const T tn = s_n[j];
    const T gn = s_g[j];
    const T d = dh[j];
    T n, dn_da, r, dr_da;
    if constexpr (M == kSst) {
      const T at = std::fabs(tn);
      n = tn * at;
      dn_da = T(2) * at * (T(1) - tn * tn);
      r = sr * sr;
      dr_da = T(2) * r * (T(1) - sr);
    } else {
      n = tn;
      dn_da = T(1) - tn * tn;
      r = sr;
      dr_da = sr * (T(1) - sr);
    }
    T z, dz_da;
    T dz_dp = T(0);
    if constexpr (M == kRefine) {
      const T sp = s_p[j];
      const T fz = sz * (T(1) - sz);
      z = T(2) * sp * sz + (T(1) - T(2) * sp) * sz * sz;
      dz_da = (T(2) * sp + T(2) * (T(1) - T(2) * sp) * sz) * fz;
      dz_dp = T(2) * fz * sp * (T(1) - sp);
    } else if constexpr (M == kSst) {
      z = sz * sz;
      dz_da = T(2) * z * (T(1) - sz);
    } else {
      z = sz;
      dz_da = sz * (T(1) - sz);
    }
    const T dan = d * (T(1) - z) * dn_da;
    const T dz = d * (hp[j] - n);
    const T dar = dan * gn * dr_da;
    const T daz = dz * dz_da;
    dgi[j] = dar;
    dgh[j] = dar;
    dgi[H + j] = daz;
    dgh[H + j] = daz;
    dgi[2 * H + j] = dan;
    dgh[2 * H + j] = dan * r;
    if constexpr (M == kRefine) {
      const T dap = dz * dz_dp;
      dgi[3 * H + j] = dap;
      dgh[3 * H + j] = dap;
    }
    dnext[j] = d * z + (dprev ? dprev[j] : T(0));
  }
}

// ------------------------------------------------------- whole-batch kernels
template <typename T, int M, bool SAVE>
SOEN_INLINE void fwd_step_impl(const T* gi, const T* gh, const T* hp, T* hn,
                               T* sv, int64_t B, int64_t H) {
  const int64_t G = gates_of(M), K = saved_of(M);
  for (int64_t b = 0; b < B; ++b)
    fwd_row<T, M, SAVE>(gi + b * G * H, gh + b * G * H, hp + b * H,
                        hn + b * H, SAVE ? sv + b * K * H : nullptr, H);
}

template <typename T, int M>
SOEN_INLINE void bwd_step_impl(const T* dh, const T* hp, const T* sv,
                               const T* dprev, T* dgi, T* dgh, T* dnext,
                               int64_t B, int64_t H) {
  const int64_t G = gates_of(M), K = saved_of(M);
  for (int64_t b = 0; b < B; ++b)
    bwd_row<T, M>(dh + b * H, hp + b * H, sv + b * K * H,
                  dprev ? dprev + b * H : nullptr, dgi + b * G * H,
                  dgh + b * G * H, dnext + b * H, H);
}

// Generic (double) versions.
template <typename T, int M, bool SAVE>
void fwd_step(const T* gi, const T* gh, const T* hp, T* hn, T* sv, int64_t B,
              int64_t H) {
  fwd_step_impl<T, M, SAVE>(gi, gh, hp, hn, sv, B, H);
}
template <typename T, int M>
void bwd_step(const T* dh, const T* hp, const T* sv, const T* dprev, T* dgi,
              T* dgh, T* dnext, int64_t B, int64_t H) {
  bwd_step_impl<T, M>(dh, hp, sv, dprev, dgi, dgh, dnext, B, H);
}

// float versions: non-template functions so that they can be multi-versioned.
#define SOEN_FLOAT_KERNELS(M, NAME)                                            \
  SOEN_CLONES void fwd_##NAME##_save(const float* gi, const float* gh,        \
                                     const float* hp, float* hn, float* sv,   \
                                     int64_t B, int64_t H) {                  \
    fwd_step_impl<float, M, true>(gi, gh, hp, hn, sv, B, H);                  \
  }                                                                           \
  SOEN_CLONES void fwd_##NAME##_nosave(const float* gi, const float* gh,      \
                                       const float* hp, float* hn, float* sv, \
                                       int64_t B, int64_t H) {                \
    fwd_step_impl<float, M, false>(gi, gh, hp, hn, sv, B, H);                 \
  }                                                                           \
  SOEN_CLONES void bwd_##NAME(const float* dh, const float* hp,               \
                              const float* sv, const float* dprev,            \
                              float* dgi, float* dgh, float* dnext,           \
                              int64_t B, int64_t H) {                         \
    bwd_step_impl<float, M>(dh, hp, sv, dprev, dgi, dgh, dnext, B, H);        \
  }

SOEN_FLOAT_KERNELS(kSigmoid, sigmoid)
SOEN_FLOAT_KERNELS(kRefine, refine)
SOEN_FLOAT_KERNELS(kSst, sst)

template <>
void fwd_step<float, kSigmoid, true>(const float* a, const float* b,
                                     const float* c, float* d, float* e,
                                     int64_t B, int64_t H) {
  fwd_sigmoid_save(a, b, c, d, e, B, H);
}
template <>
void fwd_step<float, kSigmoid, false>(const float* a, const float* b,
                                      const float* c, float* d, float* e,
                                      int64_t B, int64_t H) {
  fwd_sigmoid_nosave(a, b, c, d, e, B, H);
}
template <>
void fwd_step<float, kRefine, true>(const float* a, const float* b,
                                    const float* c, float* d, float* e,
                                    int64_t B, int64_t H) {
  fwd_refine_save(a, b, c, d, e, B, H);
}
template <>
void fwd_step<float, kRefine, false>(const float* a, const float* b,
                                     const float* c, float* d, float* e,
                                     int64_t B, int64_t H) {
  fwd_refine_nosave(a, b, c, d, e, B, H);
}
template <>
void fwd_step<float, kSst, true>(const float* a, const float* b,
                                 const float* c, float* d, float* e, int64_t B,
                                 int64_t H) {
  fwd_sst_save(a, b, c, d, e, B, H);
}
template <>
void fwd_step<float, kSst, false>(const float* a, const float* b,
                                  const float* c, float* d, float* e, int64_t B,
                                  int64_t H) {
  fwd_sst_nosave(a, b, c, d, e, B, H);
}
template <>
void bwd_step<float, kSigmoid>(const float* a, const float* b, const float* c,
                               const float* d, float* e, float* f, float* g,
                               int64_t B, int64_t H) {
  bwd_sigmoid(a, b, c, d, e, f, g, B, H);
}
template <>
void bwd_step<float, kRefine>(const float* a, const float* b, const float* c,
                              const float* d, float* e, float* f, float* g,
                              int64_t B, int64_t H) {
  bwd_refine(a, b, c, d, e, f, g, B, H);
}
template <>
void bwd_step<float, kSst>(const float* a, const float* b, const float* c,
                           const float* d, float* e, float* f, float* g,
                           int64_t B, int64_t H) {
  bwd_sst(a, b, c, d, e, f, g, B, H);
}

// ------------------------------------------------------------- time loops
template <typename T, int M>
void forward_loop(const at::Tensor& gi, const at::Tensor& h0,
                  const at::Tensor& w_hh_t, const at::Tensor& b_hh,
                  at::Tensor& out, at::Tensor* saved) {
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t G = gates_of(M), K = saved_of(M);
  at::Tensor gh = at::empty({B, G * H}, gi.options());
  const T* gi_p = gi.data_ptr<T>();
  const T* gh_p = gh.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* sv_p = saved ? saved->data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < T_; ++t) {
    const at::Tensor hp = t == 0 ? h0 : out.select(0, t - 1);
    at::addmm_out(gh, b_hh, hp, w_hh_t);
    const T* hp_p = t == 0 ? h0.data_ptr<T>() : out_p + (t - 1) * B * H;
    if (sv_p)
      fwd_step<T, M, true>(gi_p + t * B * G * H, gh_p, hp_p, out_p + t * B * H,
                           sv_p + t * B * K * H, B, H);
    else
      fwd_step<T, M, false>(gi_p + t * B * G * H, gh_p, hp_p,
                            out_p + t * B * H, nullptr, B, H);
  }
}

template <typename T, int M>
std::vector<at::Tensor> backward_loop(const at::Tensor& grad_out,
                                      const at::Tensor& grad_hT,
                                      const at::Tensor& h0,
                                      const at::Tensor& w_hh,
                                      const at::Tensor& out,
                                      const at::Tensor& saved) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t G = gates_of(M), K = saved_of(M);
  at::Tensor d_gi = at::empty({T_, B, G * H}, out.options());
  at::Tensor d_gh = at::empty({T_, B, G * H}, out.options());
  at::Tensor cur = at::zeros({B, H}, out.options());
  at::Tensor nxt = at::empty({B, H}, out.options());
  const bool has_go = grad_out.defined();
  if (has_go) cur.add_(grad_out.select(0, T_ - 1));
  if (grad_hT.defined()) cur.add_(grad_hT);
  const T* go_p = has_go ? grad_out.data_ptr<T>() : nullptr;
  const T* out_p = out.data_ptr<T>();
  const T* h0_p = h0.data_ptr<T>();
  const T* sv_p = saved.data_ptr<T>();
  T* dgi_p = d_gi.data_ptr<T>();
  T* dgh_p = d_gh.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* hp_p = t == 0 ? h0_p : out_p + (t - 1) * B * H;
    const T* dprev = (has_go && t > 0) ? go_p + (t - 1) * B * H : nullptr;
    bwd_step<T, M>(cur.data_ptr<T>(), hp_p, sv_p + t * B * K * H, dprev,
                   dgi_p + t * B * G * H, dgh_p + t * B * G * H,
                   nxt.data_ptr<T>(), B, H);
    nxt.addmm_(d_gh.select(0, t), w_hh);
    std::swap(cur, nxt);
  }
  // Weight gradients: one GEMM over all steps (h_{t-1} = out[t-1], h_{-1} = h0).
  at::Tensor d_w = at::mm(d_gh.select(0, 0).t(), h0);
  if (T_ > 1) {
    d_w.addmm_(d_gh.narrow(0, 1, T_ - 1).reshape({(T_ - 1) * B, G * H}).t(),
               out.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, H}));
  }
  at::Tensor d_b = d_gh.reshape({T_ * B, G * H}).sum(0);
  return {d_gi, cur, d_w, d_b};
}

void check_inputs(const at::Tensor& gi, const at::Tensor& h0,
                  const at::Tensor& w_hh, const at::Tensor& b_hh, int64_t mode) {
  TORCH_CHECK(mode == kSigmoid || mode == kRefine || mode == kSst,
              "soensim gru_cpu: unknown mode id ", mode);
  TORCH_CHECK(gi.device().is_cpu(), "soensim gru_cpu: gi must be on the CPU");
  TORCH_CHECK(gi.dim() == 3 && h0.dim() == 2 && w_hh.dim() == 2 &&
                  b_hh.dim() == 1,
              "soensim gru_cpu: bad ranks");
  const int64_t G = gates_of(static_cast<int>(mode));
  const int64_t B = gi.size(1), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && gi.size(2) == G * H &&
                  w_hh.size(0) == G * H && w_hh.size(1) == H &&
                  b_hh.size(0) == G * H,
              "soensim gru_cpu: inconsistent shapes");
  for (const at::Tensor* x : {&gi, &h0, &w_hh, &b_hh}) {
    TORCH_CHECK(x->is_contiguous(), "soensim gru_cpu: inputs must be contiguous");
    TORCH_CHECK(x->scalar_type() == gi.scalar_type(),
                "soensim gru_cpu: inputs must share one dtype");
  }
}

}  // namespace

// Returns {out (T,B,H), saved (T,B,K*H) or an empty tensor when save is false}.
std::vector<at::Tensor> gru_forward(const at::Tensor& gi, const at::Tensor& h0,
                                   const at::Tensor& w_hh,
                                   const at::Tensor& b_hh, int64_t mode,
                                   bool save) {
  check_inputs(gi, h0, w_hh, b_hh, mode);
  c10::NoGradGuard no_grad;
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t K = saved_of(static_cast<int>(mode));
  at::Tensor out = at::empty({T_, B, H}, gi.options());
  at::Tensor saved = save ? at::empty({T_, B, K * H}, gi.options())
                          : at::empty({0}, gi.options());
  const at::Tensor w_t = w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "soensim_gru_forward", [&] {
    at::Tensor* sp = save ? &saved : nullptr;
    switch (mode) {
      case kSigmoid:
        forward_loop<scalar_t, kSigmoid>(gi, h0, w_t, b_hh, out, sp);
        break;
      case kRefine:
        forward_loop<scalar_t, kRefine>(gi, h0, w_t, b_hh, out, sp);
        break;
      default:
        forward_loop<scalar_t, kSst>(gi, h0, w_t, b_hh, out, sp);
        break;
    }
  });
  return {out, saved};
}

// grad_out / grad_hT may be undefined (None).  Returns {d_gi, d_h0, d_w_hh, d_b_hh}.
std::vector<at::Tensor> gru_backward(const std::optional<at::Tensor>& grad_out,
                                    const std::optional<at::Tensor>& grad_hT,
                                    const at::Tensor& h0,
                                    const at::Tensor& w_hh,
                                    const at::Tensor& out,
                                    const at::Tensor& saved, int64_t mode) {
  TORCH_CHECK(mode == kSigmoid || mode == kRefine || mode == kSst,
              "soensim gru_cpu: unknown mode id ", mode);
  c10::NoGradGuard no_grad;
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t K = saved_of(static_cast<int>(mode));
  TORCH_CHECK(saved.dim() == 3 && saved.size(0) == T_ && saved.size(1) == B &&
                  saved.size(2) == K * H,
              "soensim gru_cpu: saved activations missing or of the wrong shape");
  at::Tensor go, gh;
  if (grad_out.has_value() && grad_out->defined()) go = grad_out->contiguous();
  if (grad_hT.has_value() && grad_hT->defined()) gh = grad_hT->contiguous();
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "soensim_gru_backward", [&] {
    switch (mode) {
      case kSigmoid:
        res = backward_loop<scalar_t, kSigmoid>(go, gh, h0, w_hh, out, saved);
        break;
      case kRefine:
        res = backward_loop<scalar_t, kRefine>(go, gh, h0, w_hh, out, saved);
        break;
      default:
        res = backward_loop<scalar_t, kSst>(go, gh, h0, w_hh, out, saved);
        break;
    }
  });
  return res;
}

// Elementwise helpers exposed for testing the float approximations.
at::Tensor fast_sigmoid(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "float, contiguous");
  at::Tensor y = at::empty_like(x);
  const float* a = x.data_ptr<float>();
  float* b = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) b[i] = sigmoid_f(a[i]);
  return y;
}

at::Tensor fast_tanh(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "float, contiguous");
  at::Tensor y = at::empty_like(x);
  const float* a = x.data_ptr<float>();
  float* b = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) b[i] = tanh_f(a[i]);
  return y;
}

// Registered as torch.ops.soensim_gru.*; the Python side wraps them in an
// autograd.Function (gates/kernels/cpu.py).
TORCH_LIBRARY(soensim_gru, m) {
  m.def("forward(Tensor gi, Tensor h0, Tensor w_hh, Tensor b_hh, int mode, bool save) -> Tensor[]");
  m.def("backward(Tensor? grad_out, Tensor? grad_hT, Tensor h0, Tensor w_hh, Tensor out, Tensor saved, int mode) -> Tensor[]");
  m.def("fast_sigmoid(Tensor x) -> Tensor");
  m.def("fast_tanh(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(soensim_gru, CPU, m) {
  m.impl("forward", &gru_forward);
  m.impl("backward", &gru_backward);
  m.impl("fast_sigmoid", &fast_sigmoid);
  m.impl("fast_tanh", &fast_tanh);
}
