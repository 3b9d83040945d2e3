// Fused LSTM recurrence for the CPU: the time loop runs here, in compiled code.
//
// Semantics (torch.nn.LSTM form; the mode table is gates/kernels/modes.py, the
// torch-ops twin gates/kernels/generic.py), a_k = gi_k + gh_k:
//   gh_t = h_{t-1} W_hh^T + b_hh     one GEMM per step, blocks i, f, c, o[, mf, mi]
//   f = decay(a_f) (sigmoid, sigmoid^2, cumax);  refine: p = s(a_i),
//   g = 2 p f + (1 - 2 p) f^2, i = 1 - g;  cumax: g = f, i = 1 - cumax(a_i);
//   else g = f, i = P(a_i)
//   master gates (M units, unit j uses j / C): w = mf mi, g <- g w + mf - w,
//   i <- i w + mi - w
//   c_t = g c_{t-1} + i cand(a_c),  h_t = P(a_o) tanh(c_t)
//
// Forward saves, per step and batch row, R + H values: in each block's columns
// the block's base activation (s_i / s_rho or softmax(a_i), s_f or softmax(a_f),
// tanh(a_c), s_o, master sigmoid or softmax values), then c_t; backward
// recomputes the rest.  In the LSTM every block's gh gradient equals its gi
// gradient, so backward's per-step GEMM (dh_{t-1} = dout_{t-1} + d_gi_t W_hh)
// and the one dW_hh GEMM after the loop read d_gi directly.  O(T) both ways.

#include "rnn_cpu.h"

namespace soen {
namespace {

template <typename T>
struct FwdArgs {
  const T* gi;  // (B, R) input projections of this step
  const T* gh;  // (B, R) b_hh + h_{t-1} W_hh^T
  const T* cp;  // (B, ·) c_{t-1}, rows cp_stride apart
  T* cn;        // (B, H) c_t (out) when not saving (else c_t goes to sv)
  T* hn;        // (B, H) h_t (out)
  T* sv;        // (B, R + H) saved activations (out), unused without SAVE
  T* scr;       // (B, S) scratch
  int64_t B, H, M, S, cp_stride;
};

template <typename T>
struct BwdArgs {
  const T* dh;  // (B, H) dL/dh_t (all paths)
  const T* dc;  // (B, H) dL/dc_t from step t+1
  const T* cp;  // (B, ·) c_{t-1}, rows cp_stride apart
  const T* sv;  // (B, R + H) saved activations of step t
  T* dgi;       // (B, R) dL/dgi_t = dL/dgh_t (out)
  T* db;        // (R)    sum over the batch of dL/dgh_t (out)
  T* dcn;       // (B, H) dL/dc_{t-1} (out)
  T* scr;       // (B, S) scratch
  int64_t B, H, M, S, cp_stride;
};

constexpr int64_t scratch_width(int64_t H, int64_t M) { return 8 * H + 2 * M; }

template <typename T, int ACT, bool REF, int MAS, bool SAVE>
SOEN_INLINE void fwd_row(const T* __restrict gi, const T* __restrict gh,
                         const T* __restrict cp, T* __restrict cn, T* __restrict hn,
                         T* __restrict sv, T* __restrict scr, int64_t H, int64_t M) {
  constexpr bool SQ = squares_gates(ACT);
  constexpr bool SQC = ACT == kSstCandidate;
  constexpr bool CUMAX_IN = ACT == kCumax && !REF;  // input gate 1 - cumax(a_i)
  const int64_t R = 4 * H + 2 * M;
  const T* gii = gi;
  const T* gif = gi + H;
  const T* gic = gi + 2 * H;
  const T* gio = gi + 3 * H;
  const T* ghi = gh;
  const T* ghf = gh + H;
  const T* ghc = gh + 2 * H;
  const T* gho = gh + 3 * H;
  T* fb = scr;  // cumax decay gate
  T* ib = scr + H;  // cumax of the input block
  T* mfx = scr + 2 * H;
  T* mix = scr + 3 * H;
  if constexpr (ACT == kCumax) {
    T* s = SAVE ? sv + H : fb;
    softmax_row(gif, ghf, s, H);
    cumsum_row(s, fb, H);
  }
  if constexpr (CUMAX_IN) {
    T* s = SAVE ? sv : ib;
    softmax_row(gii, ghi, s, H);
    cumsum_row(s, ib, H);
  }
  if constexpr (MAS != kNoMaster) {
    T* s_m = SAVE ? sv + 4 * H : scr + 4 * H;
    master_forward<T, MAS>(gi + 4 * H, gh + 4 * H, s_m, s_m + M, mfx, mix, M, H / M);
  }
  T* s_i = sv;
  T* s_f = sv + H;
  T* s_c = sv + 2 * H;
  T* s_o = sv + 3 * H;
  T* c_out = SAVE ? sv + R : cn;
  SOEN_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    T f;
    if constexpr (ACT == kCumax) {
      f = fb[j];
    } else {
      const T sf = act_sigmoid(gif[j] + ghf[j]);
      f = plain<T, SQ>(sf);
      if constexpr (SAVE) s_f[j] = sf;
    }
    T g = f, i;
    if constexpr (REF) {
      const T sp = act_sigmoid(gii[j] + ghi[j]);
      g = T(2) * sp * f + (T(1) - T(2) * sp) * f * f;
      i = T(1) - g;
      if constexpr (SAVE) s_i[j] = sp;
    } else if constexpr (CUMAX_IN) {
      i = T(1) - ib[j];
    } else {
      const T si = act_sigmoid(gii[j] + ghi[j]);
      i = plain<T, SQ>(si);
      if constexpr (SAVE) s_i[j] = si;
    }
    if constexpr (MAS != kNoMaster) {
      const T w = mfx[j] * mix[j];
      g = g * w + (mfx[j] - w);
      i = i * w + (mix[j] - w);
    }
    const T tg = act_tanh(gic[j] + ghc[j]);
    const T c = g * cp[j] + i * cand<T, SQC>(tg);
    const T so = act_sigmoid(gio[j] + gho[j]);
    hn[j] = plain<T, SQ>(so) * act_tanh(c);
    c_out[j] = c;
    if constexpr (SAVE) {
      s_c[j] = tg;
      s_o[j] = so;
    }
  }
}

template <typename T, int ACT, bool REF, int MAS>
SOEN_INLINE void bwd_row(const T* __restrict dh, const T* __restrict dc,
                         const T* __restrict cp, const T* __restrict sv, T* __restrict dgi,
                         T* __restrict db, T* __restrict dcn, T* __restrict scr, int64_t H,
                         int64_t M) {
  constexpr bool SQ = squares_gates(ACT);
  constexpr bool SQC = ACT == kSstCandidate;
  constexpr bool CUMAX_IN = ACT == kCumax && !REF;
  const int64_t R = 4 * H + 2 * M;
  const T* s_i = sv;
  const T* s_f = sv + H;
  const T* s_c = sv + 2 * H;
  const T* s_o = sv + 3 * H;
  const T* c_t = sv + R;
  T* fb = scr;
  T* ib = scr + H;
  T* mfx = scr + 2 * H;
  T* mix = scr + 3 * H;
  T* dfb = scr + 4 * H;
  T* dib = scr + 5 * H;
  T* dmfx = scr + 6 * H;
  T* dmix = scr + 7 * H;
  if constexpr (ACT == kCumax) cumsum_row(s_f, fb, H);
  if constexpr (CUMAX_IN) cumsum_row(s_i, ib, H);
  if constexpr (MAS != kNoMaster)
    master_values<T, MAS>(sv + 4 * H, sv + 4 * H + M, mfx, mix, M, H / M);
  SOEN_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    const T d = dh[j];
    const T tc = act_tanh(c_t[j]);
    const T so = s_o[j];
    const T dao = d * tc * plain_grad<T, SQ>(so);
    const T dct = dc[j] + d * plain<T, SQ>(so) * (T(1) - tc * tc);
    const T tg = s_c[j];
    const T cd = cand<T, SQC>(tg);
    T f, df_da = T(0);
    if constexpr (ACT == kCumax) {
      f = fb[j];
    } else {
      f = plain<T, SQ>(s_f[j]);
      df_da = plain_grad<T, SQ>(s_f[j]);
    }
    T g = f, i, dg_df = T(1), dg_dap = T(0), di_da = T(0);
    if constexpr (REF) {
      const T sp = s_i[j];
      g = T(2) * sp * f + (T(1) - T(2) * sp) * f * f;
      i = T(1) - g;
      dg_df = T(2) * sp + T(2) * (T(1) - T(2) * sp) * f;
      dg_dap = T(2) * f * (T(1) - f) * sp * (T(1) - sp);
    } else if constexpr (CUMAX_IN) {
      i = T(1) - ib[j];
    } else {
      i = plain<T, SQ>(s_i[j]);
      di_da = plain_grad<T, SQ>(s_i[j]);
    }
    T ge = g, ie = i, dg = dct * cp[j], di = dct * cd;
    if constexpr (MAS != kNoMaster) {
      const T mf = mfx[j], mi = mix[j], w = mf * mi;
      const T dw = dg * (g - T(1)) + di * (i - T(1));
      dmfx[j] = dg + dw * mi;
      dmix[j] = di + dw * mf;
      ge = g * w + (mf - w);
      ie = i * w + (mi - w);
      dg *= w;
      di *= w;
    }
    const T dac = dct * ie * cand_grad<T, SQC>(tg);
    if constexpr (REF) {
      dg -= di;  // i = 1 - g
      const T dap = dg * dg_dap;
      dgi[j] = dap;
      db[j] += dap;
    } else if constexpr (CUMAX_IN) {
      dib[j] = -di;
    } else {
      const T dai = di * di_da;
      dgi[j] = dai;
      db[j] += dai;
    }
    const T df = dg * dg_df;
    if constexpr (ACT == kCumax) {
      dfb[j] = df;
    } else {
      const T daf = df * df_da;
      dgi[H + j] = daf;
      db[H + j] += daf;
    }
    dgi[2 * H + j] = dac;
    db[2 * H + j] += dac;
    dgi[3 * H + j] = dao;
    db[3 * H + j] += dao;
    dcn[j] = dct * ge;
  }
  if constexpr (ACT == kCumax) {
    cumax_grad_row(s_f, dfb, dgi + H, H);
    finish_block<T>(dgi + H, nullptr, db + H, H);
  }
  if constexpr (CUMAX_IN) {
    cumax_grad_row(s_i, dib, dgi, H);
    finish_block<T>(dgi, nullptr, db, H);
  }
  if constexpr (MAS != kNoMaster) {
    master_backward<T, MAS>(sv + 4 * H, sv + 4 * H + M, dmfx, dmix, dgi + 4 * H, scr + 8 * H,
                            M, H / M);
    finish_block<T>(dgi + 4 * H, nullptr, db + 4 * H, 2 * M);
  }
}

// ------------------------------------------------------- whole-batch kernels
template <typename T, int ACT, bool REF, int MAS, bool SAVE>
SOEN_INLINE void fwd_impl(const FwdArgs<T>& a) {
  const int64_t H = a.H, R = 4 * H + 2 * a.M;
  for (int64_t b = 0; b < a.B; ++b)
    fwd_row<T, ACT, REF, MAS, SAVE>(a.gi + b * R, a.gh + b * R, a.cp + b * a.cp_stride,
                                    SAVE ? nullptr : a.cn + b * H, a.hn + b * H,
                                    SAVE ? a.sv + b * (R + H) : nullptr, a.scr + b * a.S, H,
                                    a.M);
}

template <typename T, int ACT, bool REF, int MAS>
SOEN_INLINE void bwd_impl(const BwdArgs<T>& a) {
  const int64_t H = a.H, R = 4 * H + 2 * a.M;
  for (int64_t b = 0; b < a.B; ++b)
    bwd_row<T, ACT, REF, MAS>(a.dh + b * H, a.dc + b * H, a.cp + b * a.cp_stride,
                              a.sv + b * (R + H), a.dgi + b * R, a.db, a.dcn + b * H,
                              a.scr + b * a.S, H, a.M);
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
  TORCH_CHECK(false, "soensim lstm_cpu: mode not compiled");
}

template <>
Kernels<float> kernels_for<float>(const Mode& m) {
#define SOEN_CASE(A, RF, MS, NAME)                    \
  if (m.act == A && m.refine == RF && m.master == MS) \
    return {&fwd_save_##NAME, &fwd_nosave_##NAME, &bwd_##NAME};
  SOEN_MODES(SOEN_CASE)
#undef SOEN_CASE
  TORCH_CHECK(false, "soensim lstm_cpu: mode not compiled");
}

// ------------------------------------------------------------- time loops
// Returns c_T.
template <typename T>
at::Tensor forward_loop(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& c0,
                        const at::Tensor& w_hh_t, const at::Tensor& b_hh, at::Tensor& out,
                        at::Tensor* saved, const Mode& m) {
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t R = gi.size(2), S = scratch_width(H, m.M), SW = R + H;
  const Kernels<T> k = kernels_for<T>(m);
  at::Tensor gh = at::empty({B, R}, gi.options());
  at::Tensor scratch = at::empty({B, S}, gi.options());
  // c_t ping-pong when nothing is saved (else c_t lives in the saved rows).
  at::Tensor cbuf = at::empty({saved ? 0 : 2, B, H}, gi.options());
  const T* gi_p = gi.data_ptr<T>();
  const T* gh_p = gh.data_ptr<T>();
  const T* c0_p = c0.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* sv_p = saved ? saved->data_ptr<T>() : nullptr;
  T* scr_p = scratch.data_ptr<T>();
  T* cb_p = cbuf.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    at::addmm_out(gh, b_hh, t == 0 ? h0 : out.select(0, t - 1), w_hh_t);
    const T* cp_p;
    int64_t cp_stride = H;
    if (t == 0) {
      cp_p = c0_p;
    } else if (sv_p) {
      cp_p = sv_p + (t - 1) * B * SW + R;
      cp_stride = SW;
    } else {
      cp_p = cb_p + ((t - 1) & 1) * B * H;
    }
    T* cn_p = sv_p ? nullptr : cb_p + (t & 1) * B * H;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t) {
      FwdArgs<T> a{gi_p + (t * B + b0) * R,
                   gh_p + b0 * R,
                   cp_p + b0 * cp_stride,
                   cn_p ? cn_p + b0 * H : nullptr,
                   out_p + (t * B + b0) * H,
                   sv_p ? sv_p + (t * B + b0) * SW : nullptr,
                   scr_p + b0 * S,
                   b1 - b0,
                   H,
                   m.M,
                   S,
                   cp_stride};
      if (sv_p)
        k.fwd_save(a);
      else
        k.fwd_nosave(a);
    });
  }
  if (saved) return saved->select(0, T_ - 1).narrow(1, R, H).clone();
  return cbuf.select(0, (T_ - 1) & 1).clone();
}

template <typename T>
std::vector<at::Tensor> backward_loop(const at::Tensor& grad_out, const at::Tensor& grad_hT,
                                      const at::Tensor& grad_cT, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& w_hh,
                                      const at::Tensor& out, const at::Tensor& saved,
                                      const Mode& m) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t R = w_hh.size(0), S = scratch_width(H, m.M), SW = R + H;
  const Kernels<T> k = kernels_for<T>(m);
  const auto opt = out.options();
  at::Tensor d_gi = empty_big({T_, B, R}, opt);
  const int64_t NW = std::max<int64_t>(1, at::get_num_threads());
  at::Tensor db_steps = zeros_big({T_, NW, R}, opt);
  at::Tensor scratch = at::empty({B, S}, opt);
  at::Tensor cur_h = at::zeros({B, H}, opt);
  at::Tensor nxt_h = at::empty({B, H}, opt);
  at::Tensor cur_c = grad_cT.defined() ? grad_cT.clone() : at::zeros({B, H}, opt);
  at::Tensor nxt_c = at::empty({B, H}, opt);
  const bool has_go = grad_out.defined();
  if (has_go) cur_h.add_(grad_out.select(0, T_ - 1));
  if (grad_hT.defined()) cur_h.add_(grad_hT);
  const T* c0_p = c0.data_ptr<T>();
  const T* sv_p = saved.data_ptr<T>();
  T* dgi_p = d_gi.data_ptr<T>();
  T* db_p = db_steps.data_ptr<T>();
  T* scr_p = scratch.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* dh_p = cur_h.data_ptr<T>();
    const T* dc_p = cur_c.data_ptr<T>();
    T* dcn_p = nxt_c.data_ptr<T>();
    const T* cp_p = t == 0 ? c0_p : sv_p + (t - 1) * B * SW + R;
    const int64_t cp_stride = t == 0 ? H : SW;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t w) {
      BwdArgs<T> a{dh_p + b0 * H,
                   dc_p + b0 * H,
                   cp_p + b0 * cp_stride,
                   sv_p + (t * B + b0) * SW,
                   dgi_p + (t * B + b0) * R,
                   db_p + (t * NW + std::min(w, NW - 1)) * R,
                   dcn_p + b0 * H,
                   scr_p + b0 * S,
                   b1 - b0,
                   H,
                   m.M,
                   S,
                   cp_stride};
      k.bwd(a);
    });
    // dh_{t-1} = dout_{t-1} + d_gi_t W_hh
    const at::Tensor dgi_t = d_gi.select(0, t);
    if (has_go && t > 0)
      at::addmm_out(nxt_h, grad_out.select(0, t - 1), dgi_t, w_hh);
    else
      at::mm_out(nxt_h, dgi_t, w_hh);
    std::swap(cur_h, nxt_h);
    std::swap(cur_c, nxt_c);
  }
  // dW_hh = sum_t d_gi_t^T h_{t-1}: one GEMM over all steps (plus step 0 with h0).
  const at::Tensor gi2 = d_gi.view({T_ * B, R});
  at::Tensor d_w = at::mm(gi2.narrow(0, 0, B).t(), h0);
  if (T_ > 1)
    d_w.addmm_(gi2.narrow(0, B, (T_ - 1) * B).t(),
               out.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, H}));
  at::Tensor d_b = db_steps.view({T_ * NW, R}).sum(0);
  return {d_gi, cur_h, cur_c, d_w, d_b};
}

}  // namespace

// Returns {out (T,B,H), c_T (B,H), saved (T,B,R+H) or an empty tensor when save is false}.
std::vector<at::Tensor> lstm_forward(const at::Tensor& gi, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh,
                                     const at::Tensor& b_hh, int64_t act, bool refine,
                                     int64_t master, int64_t master_units, bool save) {
  TORCH_CHECK(gi.device().is_cpu(), "soensim lstm_cpu: gi must be on the CPU");
  TORCH_CHECK(gi.dim() == 3 && h0.dim() == 2 && c0.dim() == 2 && w_hh.dim() == 2 &&
                  b_hh.dim() == 1,
              "soensim lstm_cpu: bad ranks");
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const Mode m = make_mode(act, refine, master, master_units, H);
  const int64_t R = rows_of(4, H, m);
  TORCH_CHECK(T_ > 0, "soensim lstm_cpu: empty sequence");
  TORCH_CHECK(h0.size(0) == B && c0.size(0) == B && c0.size(1) == H && gi.size(2) == R &&
                  w_hh.size(0) == R && w_hh.size(1) == H && b_hh.size(0) == R,
              "soensim lstm_cpu: inconsistent shapes");
  for (const at::Tensor* x : {&gi, &h0, &c0, &w_hh, &b_hh}) {
    TORCH_CHECK(x->is_contiguous(), "soensim lstm_cpu: inputs must be contiguous");
    TORCH_CHECK(x->scalar_type() == gi.scalar_type(),
                "soensim lstm_cpu: inputs must share one dtype");
  }
  c10::NoGradGuard no_grad;
  at::Tensor out = empty_big({T_, B, H}, gi.options());
  at::Tensor saved =
      save ? empty_big({T_, B, R + H}, gi.options()) : at::empty({0}, gi.options());
  const at::Tensor w_t = w_hh.t().contiguous();
  at::Tensor c_T;
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "soensim_lstm_forward", [&] {
    c_T = forward_loop<scalar_t>(gi, h0, c0, w_t, b_hh, out, save ? &saved : nullptr, m);
  });
  return {out, c_T, saved};
}

// grad_out / grad_hT / grad_cT may be None.  Returns {d_gi, d_h0, d_c0, d_w_hh, d_b_hh}.
std::vector<at::Tensor> lstm_backward(const std::optional<at::Tensor>& grad_out,
                                      const std::optional<at::Tensor>& grad_hT,
                                      const std::optional<at::Tensor>& grad_cT,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_hh, const at::Tensor& out,
                                      const at::Tensor& saved, int64_t act, bool refine,
                                      int64_t master, int64_t master_units) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const Mode m = make_mode(act, refine, master, master_units, H);
  const int64_t R = rows_of(4, H, m);
  TORCH_CHECK(T_ > 0 && saved.dim() == 3 && saved.size(0) == T_ && saved.size(1) == B &&
                  saved.size(2) == R + H && w_hh.size(0) == R,
              "soensim lstm_cpu: saved activations missing or of the wrong shape");
  TORCH_CHECK(out.is_contiguous() && saved.is_contiguous() && h0.is_contiguous() &&
                  c0.is_contiguous() && w_hh.is_contiguous(),
              "soensim lstm_cpu: saved tensors must be contiguous");
  c10::NoGradGuard no_grad;
  at::Tensor go, gh, gc;
  if (grad_out.has_value() && grad_out->defined()) go = contiguous_big(*grad_out);
  if (grad_hT.has_value() && grad_hT->defined()) gh = grad_hT->contiguous();
  if (grad_cT.has_value() && grad_cT->defined()) gc = grad_cT->contiguous();
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "soensim_lstm_backward", [&] {
    res = backward_loop<scalar_t>(go, gh, gc, h0, c0, w_hh, out, saved, m);
  });
  return res;
}

}  // namespace soen
