// Fused GRU recurrence for the CPU: the time loop runs here, in compiled code.
//
// Semantics (torch.nn.GRU form; the mode table is gates/kernels/modes.py, the
// torch-ops twin gates/kernels/generic.py):
//   gh_t = h_{t-1} W_hh^T + b_hh     one GEMM per step, blocks r, z, n[, rho][, mf, mi]
//   r = P(a_r), n = cand(gi_n + r gh_n), f = decay(a_z) (sigmoid, sigmoid^2, cumax)
//   g = 2 p f + (1 - 2 p) f^2 with p = s(a_rho) (refine), else g = f;  i = 1 - g
//   master gates (M units, unit j uses j / C): w = mf mi, g <- g w + mf - w,
//   i <- i w + mi - w
//   h_t = g h_{t-1} + i n
//
// Forward saves, per step and batch row, R + H values: in each block's columns
// the block's base activation (s_r, s_z or softmax(a_z), tanh(a_n), s_rho,
// master sigmoid or softmax values), then gh_n; backward recomputes the rest.
// Backward runs the loop in reverse with one GEMM per step (dh_{t-1} += d_gh_t
// W_hh) and forms dW_hh after the loop with one GEMM per run of blocks over all
// steps (d_gh equals d_gi except in the n block, d_gh_n = d_a_n r, which is
// kept); db_hh is summed per step inside the element loop.  O(T) both ways.

#include "rnn_cpu.h"

namespace soen {
namespace {

// Arguments of one time step for a run of batch rows.  Row b of a (B, X)
// operand starts at ptr + b * X.
template <typename T>
struct FwdArgs {
  const T* gi;  // (B, R) input projections of this step
  const T* gh;  // (B, R) b_hh + h_{t-1} W_hh^T
  const T* hp;  // (B, H) h_{t-1}
  T* hn;        // (B, H) h_t (out)
  T* sv;        // (B, R + H) saved activations (out), unused without SAVE
  T* scr;       // (B, S) scratch
  int64_t B, H, M, S;
};

template <typename T>
struct BwdArgs {
  const T* dh;     // (B, H) dL/dh_t (all paths)
  const T* hp;     // (B, H) h_{t-1}
  const T* sv;     // (B, R + H) saved activations of step t
  const T* dprev;  // (B, H) dL/dout_{t-1} (zeros when absent)
  T* dgi;          // (B, R) dL/dgi_t (out)
  T* dgh;          // (B, R) dL/dgh_t (out, per-step operand of the GEMM)
  T* dghn;         // (B, H) dL/dgh_n of step t (out, kept for dW_hh)
  T* db;           // (R)    sum over the batch of dL/dgh_t (out)
  T* dnext;        // (B, H) dh_t g_eff + dprev; the caller adds dgh W_hh
  T* scr;          // (B, S) scratch
  int64_t B, H, M, S;
};

constexpr int64_t scratch_width(int64_t H, int64_t M) { return 6 * H + 2 * M; }

template <typename T, int ACT, bool REF, int MAS, bool SAVE>
SOEN_INLINE void fwd_row(const T* __restrict gi, const T* __restrict gh,
                         const T* __restrict hp, T* __restrict hn, T* __restrict sv,
                         T* __restrict scr, int64_t H, int64_t M) {
  constexpr bool SQ = squares_gates(ACT);
  constexpr bool SQC = ACT == kSstCandidate;
  const int64_t NB = REF ? 4 : 3, R = NB * H + 2 * M;
  const T* gir = gi;
  const T* giz = gi + H;
  const T* gin = gi + 2 * H;
  const T* gip = gi + 3 * H;
  const T* ghr = gh;
  const T* ghz = gh + H;
  const T* ghn = gh + 2 * H;
  const T* ghp = gh + 3 * H;
  T* fb = scr;  // cumax decay gate
  T* mfx = scr + H;
  T* mix = scr + 2 * H;
  if constexpr (ACT == kCumax) {
    T* s = SAVE ? sv + H : fb;
    softmax_row(giz, ghz, s, H);
    cumsum_row(s, fb, H);
  }
  if constexpr (MAS != kNoMaster) {
    T* s_m = SAVE ? sv + NB * H : scr + 3 * H;
    master_forward<T, MAS>(gi + NB * H, gh + NB * H, s_m, s_m + M, mfx, mix, M, H / M);
  }
  T* s_r = sv;
  T* s_z = sv + H;
  T* s_n = sv + 2 * H;
  T* s_p = sv + 3 * H;
  T* s_g = sv + R;
  SOEN_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    const T sr = act_sigmoid(gir[j] + ghr[j]);
    const T gn = ghn[j];
    const T tn = act_tanh(gin[j] + plain<T, SQ>(sr) * gn);
    const T n = cand<T, SQC>(tn);
    T f;
    if constexpr (ACT == kCumax) {
      f = fb[j];
    } else {
      const T sz = act_sigmoid(giz[j] + ghz[j]);
      f = plain<T, SQ>(sz);
      if constexpr (SAVE) s_z[j] = sz;
    }
    T g = f;
    if constexpr (REF) {
      const T sp = act_sigmoid(gip[j] + ghp[j]);
      g = T(2) * sp * f + (T(1) - T(2) * sp) * f * f;
      if constexpr (SAVE) s_p[j] = sp;
    }
    if constexpr (MAS != kNoMaster) {
      const T w = mfx[j] * mix[j];
      const T ge = g * w + (mfx[j] - w);
      const T ie = (T(1) - g) * w + (mix[j] - w);
      hn[j] = ge * hp[j] + ie * n;
    } else {
      hn[j] = n + g * (hp[j] - n);
    }
    if constexpr (SAVE) {
      s_r[j] = sr;
      s_n[j] = tn;
      s_g[j] = gn;
    }
  }
}

template <typename T, int ACT, bool REF, int MAS>
SOEN_INLINE void bwd_row(const T* __restrict dh, const T* __restrict hp,
                         const T* __restrict sv, const T* __restrict dprev,
                         T* __restrict dgi, T* __restrict dgh, T* __restrict dghn,
                         T* __restrict db, T* __restrict dnext, T* __restrict scr, int64_t H,
                         int64_t M) {
  constexpr bool SQ = squares_gates(ACT);
  constexpr bool SQC = ACT == kSstCandidate;
  const int64_t NB = REF ? 4 : 3, R = NB * H + 2 * M;
  const T* s_r = sv;
  const T* s_z = sv + H;
  const T* s_n = sv + 2 * H;
  const T* s_p = sv + 3 * H;
  const T* s_g = sv + R;
  T* fb = scr;
  T* dfb = scr + H;
  T* mfx = scr + 2 * H;
  T* mix = scr + 3 * H;
  T* dmfx = scr + 4 * H;
  T* dmix = scr + 5 * H;
  if constexpr (ACT == kCumax) cumsum_row(s_z, fb, H);
  if constexpr (MAS != kNoMaster)
    master_values<T, MAS>(sv + NB * H, sv + NB * H + M, mfx, mix, M, H / M);
  SOEN_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    const T sr = s_r[j];
    const T tn = s_n[j];
    const T gn = s_g[j];
    const T d = dh[j];
    const T r = plain<T, SQ>(sr);
    const T n = cand<T, SQC>(tn);
    T f, df_da = T(0);
    if constexpr (ACT == kCumax) {
      f = fb[j];
    } else {
      f = plain<T, SQ>(s_z[j]);
      df_da = plain_grad<T, SQ>(s_z[j]);
    }
    T g = f, dg_df = T(1), dg_dap = T(0);
    if constexpr (REF) {
      const T sp = s_p[j];
      g = T(2) * sp * f + (T(1) - T(2) * sp) * f * f;
      dg_df = T(2) * sp + T(2) * (T(1) - T(2) * sp) * f;
      dg_dap = T(2) * f * (T(1) - f) * sp * (T(1) - sp);
    }
    T dn, dg, gnext;
    if constexpr (MAS != kNoMaster) {
      const T mf = mfx[j], mi = mix[j], w = mf * mi;
      const T dge = d * hp[j], die = d * n;
      const T dw = dge * (g - T(1)) - die * g;
      dmfx[j] = dge + dw * mi;
      dmix[j] = die + dw * mf;
      dn = d * ((T(1) - g) * w + (mi - w));
      dg = (dge - die) * w;
      gnext = g * w + (mf - w);
    } else {
      dn = d * (T(1) - g);
      dg = d * (hp[j] - n);
      gnext = g;
    }
    const T dan = dn * cand_grad<T, SQC>(tn);
    const T dar = dan * gn * plain_grad<T, SQ>(sr);
    const T dgn = dan * r;
    const T df = dg * dg_df;
    dgi[j] = dar;
    dgh[j] = dar;
    db[j] += dar;
    if constexpr (ACT == kCumax) {
      dfb[j] = df;
    } else {
      const T daz = df * df_da;
      dgi[H + j] = daz;
      dgh[H + j] = daz;
      db[H + j] += daz;
    }
    dgi[2 * H + j] = dan;
    dgh[2 * H + j] = dgn;
    dghn[j] = dgn;
    db[2 * H + j] += dgn;
    if constexpr (REF) {
      const T dap = dg * dg_dap;
      dgi[3 * H + j] = dap;
      dgh[3 * H + j] = dap;
      db[3 * H + j] += dap;
    }
    dnext[j] = d * gnext + dprev[j];
  }
  if constexpr (ACT == kCumax) {
    cumax_grad_row(s_z, dfb, dgi + H, H);
    finish_block(dgi + H, dgh + H, db + H, H);
  }
  if constexpr (MAS != kNoMaster) {
    const int64_t o = NB * H;
    master_backward<T, MAS>(sv + o, sv + o + M, dmfx, dmix, dgi + o, scr + 6 * H, M, H / M);
    finish_block(dgi + o, dgh + o, db + o, 2 * M);
  }
}

// ------------------------------------------------------- whole-batch kernels
template <typename T, int ACT, bool REF, int MAS, bool SAVE>
SOEN_INLINE void fwd_impl(const FwdArgs<T>& a) {
  const int64_t R = (REF ? 4 : 3) * a.H + 2 * a.M, H = a.H;
  for (int64_t b = 0; b < a.B; ++b)
    fwd_row<T, ACT, REF, MAS, SAVE>(a.gi + b * R, a.gh + b * R, a.hp + b * H, a.hn + b * H,
                                    SAVE ? a.sv + b * (R + H) : nullptr, a.scr + b * a.S, H,
                                    a.M);
}

template <typename T, int ACT, bool REF, int MAS>
SOEN_INLINE void bwd_impl(const BwdArgs<T>& a) {
  const int64_t R = (REF ? 4 : 3) * a.H + 2 * a.M, H = a.H;
  for (int64_t b = 0; b < a.B; ++b)
    bwd_row<T, ACT, REF, MAS>(a.dh + b * H, a.hp + b * H, a.sv + b * (R + H), a.dprev + b * H,
                              a.dgi + b * R, a.dgh + b * R, a.dghn + b * H, a.db,
                              a.dnext + b * H, a.scr + b * a.S, H, a.M);
}

template <typename T>
struct Kernels {
  void (*fwd_save)(const FwdArgs<T>&);
  void (*fwd_nosave)(const FwdArgs<T>&);
  void (*bwd)(const BwdArgs<T>&);
};

template <typename T, int ACT, bool REF, int MAS>
void fwd_save_t(const FwdArgs<T>& a) { fwd_impl<T, ACT, REF, MAS, true>(a); }
template <typename T, int ACT, bool REF, int MAS>
void fwd_nosave_t(const FwdArgs<T>& a) { fwd_impl<T, ACT, REF, MAS, false>(a); }
template <typename T, int ACT, bool REF, int MAS>
void bwd_t(const BwdArgs<T>& a) { bwd_impl<T, ACT, REF, MAS>(a); }

// float: plain (non-template) functions, so that they can be multi-versioned.
#define SOEN_FLOAT_KERNELS(A, RF, MS, NAME)                               \
  SOEN_CLONES void fwd_save_##NAME(const FwdArgs<float>& a) {            \
    fwd_impl<float, A, RF, MS, true>(a);                                 \
  }                                                                      \
  SOEN_CLONES void fwd_nosave_##NAME(const FwdArgs<float>& a) {          \
    fwd_impl<float, A, RF, MS, false>(a);                                \
  }                                                                      \
  SOEN_CLONES void bwd_##NAME(const BwdArgs<float>& a) { bwd_impl<float, A, RF, MS>(a); }
SOEN_MODES(SOEN_FLOAT_KERNELS)
#undef SOEN_FLOAT_KERNELS

template <typename T>
Kernels<T> kernels_for(const Mode& m) {
#define SOEN_CASE(A, RF, MS, NAME)                                      \
  if (m.act == A && m.refine == RF && m.master == MS)                   \
    return {&fwd_save_t<T, A, RF, MS>, &fwd_nosave_t<T, A, RF, MS>, &bwd_t<T, A, RF, MS>};
  SOEN_MODES(SOEN_CASE)
#undef SOEN_CASE
  TORCH_CHECK(false, "soensim gru_cpu: mode not compiled");
}

template <>
Kernels<float> kernels_for<float>(const Mode& m) {
#define SOEN_CASE(A, RF, MS, NAME)                    \
  if (m.act == A && m.refine == RF && m.master == MS) \
    return {&fwd_save_##NAME, &fwd_nosave_##NAME, &bwd_##NAME};
  SOEN_MODES(SOEN_CASE)
#undef SOEN_CASE
  TORCH_CHECK(false, "soensim gru_cpu: mode not compiled");
}

// ------------------------------------------------------------- time loops
template <typename T>
void forward_loop(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& w_hh_t,
                  const at::Tensor& b_hh, at::Tensor& out, at::Tensor* saved, const Mode& m) {
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t R = gi.size(2), S = scratch_width(H, m.M);
  const Kernels<T> k = kernels_for<T>(m);
  at::Tensor gh = at::empty({B, R}, gi.options());
  at::Tensor scratch = at::empty({B, S}, gi.options());
  const T* gi_p = gi.data_ptr<T>();
  const T* gh_p = gh.data_ptr<T>();
  const T* h0_p = h0.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* sv_p = saved ? saved->data_ptr<T>() : nullptr;
  T* scr_p = scratch.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    at::addmm_out(gh, b_hh, t == 0 ? h0 : out.select(0, t - 1), w_hh_t);
    const T* hp_p = t == 0 ? h0_p : out_p + (t - 1) * B * H;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t) {
      FwdArgs<T> a{gi_p + (t * B + b0) * R,
                   gh_p + b0 * R,
                   hp_p + b0 * H,
                   out_p + (t * B + b0) * H,
                   sv_p ? sv_p + (t * B + b0) * (R + H) : nullptr,
                   scr_p + b0 * S,
                   b1 - b0,
                   H,
                   m.M,
                   S};
      if (sv_p)
        k.fwd_save(a);
      else
        k.fwd_nosave(a);
    });
  }
}

template <typename T>
std::vector<at::Tensor> backward_loop(const at::Tensor& grad_out, const at::Tensor& grad_hT,
                                      const at::Tensor& h0, const at::Tensor& w_hh,
                                      const at::Tensor& out, const at::Tensor& saved,
                                      const Mode& m) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t R = w_hh.size(0), S = scratch_width(H, m.M);
  const Kernels<T> k = kernels_for<T>(m);
  const auto opt = out.options();
  at::Tensor d_gi = empty_big({T_, B, R}, opt);
  at::Tensor d_ghn = empty_big({T_, B, H}, opt);  // dL/dgh_n, all steps
  // Per-step bias gradients, one row per worker thread (summed at the end).
  const int64_t NW = std::max<int64_t>(1, at::get_num_threads());
  at::Tensor db_steps = zeros_big({T_, NW, R}, opt);
  at::Tensor dgh = at::empty({B, R}, opt);  // dL/dgh, this step
  at::Tensor scratch = at::empty({B, S}, opt);
  at::Tensor cur = at::zeros({B, H}, opt);
  at::Tensor nxt = at::empty({B, H}, opt);
  at::Tensor zero = at::zeros({B, H}, opt);
  const bool has_go = grad_out.defined();
  if (has_go) cur.add_(grad_out.select(0, T_ - 1));
  if (grad_hT.defined()) cur.add_(grad_hT);
  const T* go_p = has_go ? grad_out.data_ptr<T>() : nullptr;
  const T* out_p = out.data_ptr<T>();
  const T* h0_p = h0.data_ptr<T>();
  const T* sv_p = saved.data_ptr<T>();
  const T* zero_p = zero.data_ptr<T>();
  T* dgi_p = d_gi.data_ptr<T>();
  T* dghn_p = d_ghn.data_ptr<T>();
  T* db_p = db_steps.data_ptr<T>();
  T* dgh_p = dgh.data_ptr<T>();
  T* scr_p = scratch.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* dh_p = cur.data_ptr<T>();
    T* nx_p = nxt.data_ptr<T>();
    const T* hp_p = t == 0 ? h0_p : out_p + (t - 1) * B * H;
    const T* dprev_p = (has_go && t > 0) ? go_p + (t - 1) * B * H : zero_p;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t w) {
      BwdArgs<T> a{dh_p + b0 * H,
                   hp_p + b0 * H,
                   sv_p + (t * B + b0) * (R + H),
                   dprev_p + b0 * H,
                   dgi_p + (t * B + b0) * R,
                   dgh_p + b0 * R,
                   dghn_p + (t * B + b0) * H,
                   db_p + (t * NW + std::min(w, NW - 1)) * R,
                   nx_p + b0 * H,
                   scr_p + b0 * S,
                   b1 - b0,
                   H,
                   m.M,
                   S};
      k.bwd(a);
    });
    nxt.addmm_(dgh, w_hh);  // dh_{t-1} = dh_t g + dout_{t-1} + dgh_t W_hh
    std::swap(cur, nxt);
  }
  // dW_hh = sum_t dgh_t^T h_{t-1}: one GEMM per run of blocks over all steps.
  // dgh equals dgi except in the n block, whose values are kept in d_ghn.
  at::Tensor d_w = at::empty({R, H}, opt);
  const at::Tensor gi2 = d_gi.view({T_ * B, R});
  const at::Tensor ghn2 = d_ghn.view({T_ * B, H});
  const at::Tensor hprev = out.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, H});
  auto block = [&](const at::Tensor& src, int64_t row0, int64_t rows) {
    // src: (T*B, rows) gradients of this run; rows of step 0 pair with h0.
    at::Tensor dst = d_w.narrow(0, row0, rows);
    at::mm_out(dst, src.narrow(0, 0, B).t(), h0);
    if (T_ > 1) dst.addmm_(src.narrow(0, B, (T_ - 1) * B).t(), hprev);
  };
  block(gi2.narrow(1, 0, 2 * H), 0, 2 * H);
  block(ghn2, 2 * H, H);
  if (R > 3 * H) block(gi2.narrow(1, 3 * H, R - 3 * H), 3 * H, R - 3 * H);
  at::Tensor d_b = db_steps.view({T_ * NW, R}).sum(0);
  return {d_gi, cur, d_w, d_b};
}

}  // namespace

// Returns {out (T,B,H), saved (T,B,R+H) or an empty tensor when save is false}.
std::vector<at::Tensor> gru_forward(const at::Tensor& gi, const at::Tensor& h0,
                                    const at::Tensor& w_hh, const at::Tensor& b_hh,
                                    int64_t act, bool refine, int64_t master,
                                    int64_t master_units, bool save) {
  TORCH_CHECK(gi.device().is_cpu(), "soensim gru_cpu: gi must be on the CPU");
  TORCH_CHECK(gi.dim() == 3 && h0.dim() == 2 && w_hh.dim() == 2 && b_hh.dim() == 1,
              "soensim gru_cpu: bad ranks");
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const Mode m = make_mode(act, refine, master, master_units, H);
  const int64_t R = rows_of(refine ? 4 : 3, H, m);
  TORCH_CHECK(T_ > 0, "soensim gru_cpu: empty sequence");
  TORCH_CHECK(h0.size(0) == B && gi.size(2) == R && w_hh.size(0) == R && w_hh.size(1) == H &&
                  b_hh.size(0) == R,
              "soensim gru_cpu: inconsistent shapes");
  for (const at::Tensor* x : {&gi, &h0, &w_hh, &b_hh}) {
    TORCH_CHECK(x->is_contiguous(), "soensim gru_cpu: inputs must be contiguous");
    TORCH_CHECK(x->scalar_type() == gi.scalar_type(),
                "soensim gru_cpu: inputs must share one dtype");
  }
  c10::NoGradGuard no_grad;
  at::Tensor out = empty_big({T_, B, H}, gi.options());
  at::Tensor saved =
      save ? empty_big({T_, B, R + H}, gi.options()) : at::empty({0}, gi.options());
  // A contiguous W_hh^T packs a little faster in the per-step GEMM than the
  // transposed view (measured ~3-5%); it costs one small copy per call.
  const at::Tensor w_t = w_hh.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "soensim_gru_forward", [&] {
    forward_loop<scalar_t>(gi, h0, w_t, b_hh, out, save ? &saved : nullptr, m);
  });
  return {out, saved};
}

// grad_out / grad_hT may be None.  Returns {d_gi, d_h0, d_w_hh, d_b_hh}.
std::vector<at::Tensor> gru_backward(const std::optional<at::Tensor>& grad_out,
                                     const std::optional<at::Tensor>& grad_hT,
                                     const at::Tensor& h0, const at::Tensor& w_hh,
                                     const at::Tensor& out, const at::Tensor& saved,
                                     int64_t act, bool refine, int64_t master,
                                     int64_t master_units) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const Mode m = make_mode(act, refine, master, master_units, H);
  const int64_t R = rows_of(refine ? 4 : 3, H, m);
  TORCH_CHECK(T_ > 0 && saved.dim() == 3 && saved.size(0) == T_ && saved.size(1) == B &&
                  saved.size(2) == R + H && w_hh.size(0) == R,
              "soensim gru_cpu: saved activations missing or of the wrong shape");
  TORCH_CHECK(out.is_contiguous() && saved.is_contiguous() && h0.is_contiguous() &&
                  w_hh.is_contiguous(),
              "soensim gru_cpu: saved tensors must be contiguous");
  c10::NoGradGuard no_grad;
  at::Tensor go, gh;
  if (grad_out.has_value() && grad_out->defined()) go = contiguous_big(*grad_out);
  if (grad_hT.has_value() && grad_hT->defined()) gh = grad_hT->contiguous();
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "soensim_gru_backward", [&] {
    res = backward_loop<scalar_t>(go, gh, h0, w_hh, out, saved, m);
  });
  return res;
}

}  // namespace soen
