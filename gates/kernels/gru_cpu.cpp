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
// and forms dW_hh after the loop with one GEMM over all steps per gate block
// (d_gh equals d_gi except in the n block, d_gh_n = d_a_n * r, which is kept);
// db_hh is summed per step inside the element loop.  Cost is O(T) both ways.
//
// Speed notes (2-core CPU, s-CIFAR shape): the GEMMs are ~60% of the time; the
// float element loops use a branch-free exp/tanh that the compiler vectorizes,
// compiled for several x86-64 ISA levels and picked at load time (function
// multi-versioning, so the binary stays portable; -march=native measured no
// faster) and split over batch rows with torch's OpenMP threads; large buffers
// come from a caching pool (fresh pages cost as much as the arithmetic).
//
// Ops (torch.ops.soensim_gru.*): forward, backward, empty_pooled, pool_*,
// fast_sigmoid / fast_tanh (the float approximations, for tests).

// Only the ATen headers it needs (per-operator) and the op-registration header:
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
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
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

// The element loops never alias (distinct buffers); say so, so that the
// compiler vectorizes them without runtime alias checks (it gives up on those
// when a loop touches many pointers, as the refine backward does).
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
SOEN_INLINE double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
SOEN_INLINE double act_tanh(double x) { return std::tanh(x); }

// ---------------------------------------------------------------- row kernels
// Arguments of one time step (whole batch).  Row b of a (B, X) operand starts at
// ptr + b * X.
template <typename T>
struct FwdArgs {
  const T* gi;  // (B, G*H) input projections of this step
  const T* gh;  // (B, G*H) b_hh + h_{t-1} W_hh^T
  const T* hp;  // (B, H)   h_{t-1}
  T* hn;        // (B, H)   h_t (out)
  T* sv;        // (B, K*H) saved activations (out), unused without SAVE
  int64_t B, H;
};

template <typename T>
struct BwdArgs {
  const T* dh;     // (B, H)   dL/dh_t (all paths)
  const T* hp;     // (B, H)   h_{t-1}
  const T* sv;     // (B, K*H) saved activations of step t
  const T* dprev;  // (B, H)   dL/dout_{t-1} (zeros when absent)
  T* dgi;          // (B, G*H) dL/dgi_t (out)
  T* dgh;          // (B, G*H) dL/dgh_t (out, per-step scratch for the GEMM)
  T* dghn;         // (B, H)   dL/dgh_n of step t (out, kept for dW_hh)
  T* db;           // (G*H)    sum over the batch of dL/dgh_t (out)
  T* dnext;        // (B, H)   dh_t * z + dprev; the caller adds dgh W_hh
  int64_t B, H;
};

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
  SOEN_IVDEP
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

template <typename T, int M>
SOEN_INLINE void bwd_row(const T* __restrict dh, const T* __restrict hp,
                         const T* __restrict sv, const T* __restrict dprev,
                         T* __restrict dgi, T* __restrict dgh,
                         T* __restrict dghn, T* __restrict db,
                         T* __restrict dnext, int64_t H) {
  const T* s_r = sv;
  const T* s_z = sv + H;
  const T* s_n = sv + 2 * H;
  const T* s_g = sv + 3 * H;
  const T* s_p = sv + 4 * H;
  SOEN_IVDEP
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
    const T dgn = dan * r;
    dgi[j] = dar;
    dgh[j] = dar;
    db[j] += dar;
    dgi[H + j] = daz;
    dgh[H + j] = daz;
    db[H + j] += daz;
    dgi[2 * H + j] = dan;
    dgh[2 * H + j] = dgn;
    dghn[j] = dgn;
    db[2 * H + j] += dgn;
    if constexpr (M == kRefine) {
      const T dap = dz * dz_dp;
      dgi[3 * H + j] = dap;
      dgh[3 * H + j] = dap;
      db[3 * H + j] += dap;
    }
    dnext[j] = d * z + dprev[j];
  }
}

// ------------------------------------------------------- whole-batch kernels
template <typename T, int M, bool SAVE>
SOEN_INLINE void fwd_impl(const FwdArgs<T>& a) {
  const int64_t G = gates_of(M), K = saved_of(M), H = a.H;
  for (int64_t b = 0; b < a.B; ++b)
    fwd_row<T, M, SAVE>(a.gi + b * G * H, a.gh + b * G * H, a.hp + b * H,
                        a.hn + b * H, SAVE ? a.sv + b * K * H : nullptr, H);
}

template <typename T, int M>
SOEN_INLINE void bwd_impl(const BwdArgs<T>& a) {
  const int64_t G = gates_of(M), K = saved_of(M), H = a.H;
  for (int64_t b = 0; b < a.B; ++b)
    bwd_row<T, M>(a.dh + b * H, a.hp + b * H, a.sv + b * K * H,
                  a.dprev + b * H, a.dgi + b * G * H, a.dgh + b * G * H,
                  a.dghn + b * H, a.db, a.dnext + b * H, H);
}

template <typename T>
struct Kernels {
  void (*fwd_save)(const FwdArgs<T>&);
  void (*fwd_nosave)(const FwdArgs<T>&);
  void (*bwd)(const BwdArgs<T>&);
};

template <typename T, int M>
void fwd_save_t(const FwdArgs<T>& a) { fwd_impl<T, M, true>(a); }
template <typename T, int M>
void fwd_nosave_t(const FwdArgs<T>& a) { fwd_impl<T, M, false>(a); }
template <typename T, int M>
void bwd_t(const BwdArgs<T>& a) { bwd_impl<T, M>(a); }

template <typename T>
Kernels<T> kernels_for(int64_t mode) {
  switch (mode) {
    case kSigmoid:
      return {&fwd_save_t<T, kSigmoid>, &fwd_nosave_t<T, kSigmoid>, &bwd_t<T, kSigmoid>};
    case kRefine:
      return {&fwd_save_t<T, kRefine>, &fwd_nosave_t<T, kRefine>, &bwd_t<T, kRefine>};
    default:
      return {&fwd_save_t<T, kSst>, &fwd_nosave_t<T, kSst>, &bwd_t<T, kSst>};
  }
}

// float: plain (non-template) functions, so that they can be multi-versioned.
#define SOEN_FLOAT_KERNELS(M, NAME)                                      \
  SOEN_CLONES void fwd_save_##NAME(const FwdArgs<float>& a) {           \
    fwd_impl<float, M, true>(a);                                        \
  }                                                                     \
  SOEN_CLONES void fwd_nosave_##NAME(const FwdArgs<float>& a) {         \
    fwd_impl<float, M, false>(a);                                       \
  }                                                                     \
  SOEN_CLONES void bwd_##NAME(const BwdArgs<float>& a) { bwd_impl<float, M>(a); }

SOEN_FLOAT_KERNELS(kSigmoid, sigmoid)
SOEN_FLOAT_KERNELS(kRefine, refine)
SOEN_FLOAT_KERNELS(kSst, sst)

template <>
Kernels<float> kernels_for<float>(int64_t mode) {
  switch (mode) {
    case kSigmoid:
      return {&fwd_save_sigmoid, &fwd_nosave_sigmoid, &bwd_sigmoid};
    case kRefine:
      return {&fwd_save_refine, &fwd_nosave_refine, &bwd_refine};
    default:
      return {&fwd_save_sst, &fwd_nosave_sst, &bwd_sst};
  }
}

// ------------------------------------------------------------- buffers
// The large per-call buffers (saved activations, out, d_gi, d_gh_n: hundreds of
// MB per call at training shapes) come from a small caching pool.  Fresh memory
// from the OS costs a page fault and a page clear per page — as much time as the
// arithmetic here — while a training loop asks for the same sizes every step.
// Freed buffers (the tensors' storage deleter hands them back) are kept, most
// recent first, up to a byte limit (SOENSIM_GRU_POOL_MB; default a quarter of
// physical memory, at most 8 GiB; 0 turns the pool off); older ones are
// returned to the OS.  New blocks are 2 MiB
// aligned and ask for transparent huge pages (best effort).
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: deleters may run at exit
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const size_t bytes = static_cast<size_t>(numel) * opt.dtype().itemsize();
    if (limit() == 0 || bytes < kMinBytes) return at::empty(sizes, opt);
    const size_t cap = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = take(cap);
    if (p == nullptr) {
      if (posix_memalign(&p, kAlign, cap) != 0 || p == nullptr)
        return at::empty(sizes, opt);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      (void)madvise(p, cap, MADV_HUGEPAGE);
#endif
      std::lock_guard<std::mutex> g(mu_);
      ++misses_;
    }
    auto* blk = new Block{p, cap};
    c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                         c10::DataPtr(p, blk, &BufferPool::release, c10::Device(c10::kCPU)),
                         /*allocator=*/nullptr, /*resizable=*/false);
    at::Tensor t = at::empty({0}, opt);
    std::vector<int64_t> strides(sizes.size());
    int64_t st = 1;
    for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
      strides[i] = st;
      st *= sizes[i];
    }
    t.set_(storage, 0, sizes, strides);
    return t;
  }

  void clear() {
    std::list<Entry> drop;
    {
      std::lock_guard<std::mutex> g(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    for (auto& e : drop) std::free(e.ptr);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(free_.size()), hits_,
            misses_, static_cast<int64_t>(limit_)};
  }

  void set_limit(int64_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      limit_ = bytes < 0 ? 0 : static_cast<size_t>(bytes);
    }
    trim();
  }

 private:
  struct Block {
    void* ptr;
    size_t cap;
  };
  struct Entry {
    size_t cap;
    void* ptr;
  };
  static constexpr size_t kAlign = size_t(2) << 20;
  static constexpr size_t kMinBytes = size_t(1) << 20;

  BufferPool() {
    const char* env = std::getenv("SOENSIM_GRU_POOL_MB");
    long long mb = 2048;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
      mb = std::min<long long>(8192, (static_cast<long long>(pages) * page >> 20) / 4);
#endif
    if (env != nullptr && *env != '\0') mb = std::atoll(env);
    limit_ = mb <= 0 ? 0 : static_cast<size_t>(mb) << 20;
  }

  size_t limit() {
    std::lock_guard<std::mutex> g(mu_);
    return limit_;
  }

  void* take(size_t cap) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->cap == cap) {
        void* p = it->ptr;
        cached_ -= cap;
        free_.erase(it);
        ++hits_;
        return p;
      }
    }
    return nullptr;
  }

  void put(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (cap <= limit_) {
        free_.push_front(Entry{cap, p});
        cached_ += cap;
        p = nullptr;
      }
    }
    if (p != nullptr) std::free(p);
    trim();
  }

  void trim() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> g(mu_);
      while (cached_ > limit_ && !free_.empty()) {
        cached_ -= free_.back().cap;
        drop.push_back(free_.back().ptr);
        free_.pop_back();
      }
    }
    for (void* q : drop) std::free(q);
  }

  static void release(void* ctx) {
    auto* blk = static_cast<Block*>(ctx);
    instance().put(blk->ptr, blk->cap);
    delete blk;
  }

  std::mutex mu_;
  std::list<Entry> free_;
  size_t cached_ = 0;
  size_t limit_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  return BufferPool::instance().empty(sizes, opt);
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

template <typename T>
void forward_loop(const at::Tensor& gi, const at::Tensor& h0,
                  const at::Tensor& w_hh_t, const at::Tensor& b_hh,
                  at::Tensor& out, at::Tensor* saved, int64_t mode) {
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t G = gates_of(mode), K = saved_of(mode), GH = G * H;
  const Kernels<T> k = kernels_for<T>(mode);
  at::Tensor gh = at::empty({B, GH}, gi.options());
  const T* gi_p = gi.data_ptr<T>();
  const T* gh_p = gh.data_ptr<T>();
  const T* h0_p = h0.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* sv_p = saved ? saved->data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < T_; ++t) {
    at::addmm_out(gh, b_hh, t == 0 ? h0 : out.select(0, t - 1), w_hh_t);
    const T* hp_p = t == 0 ? h0_p : out_p + (t - 1) * B * H;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t) {
      FwdArgs<T> a{gi_p + (t * B + b0) * GH, gh_p + b0 * GH, hp_p + b0 * H,
                   out_p + (t * B + b0) * H,
                   sv_p ? sv_p + (t * B + b0) * K * H : nullptr, b1 - b0, H};
      if (sv_p)
        k.fwd_save(a);
      else
        k.fwd_nosave(a);
    });
  }
}

template <typename T>
std::vector<at::Tensor> backward_loop(const at::Tensor& grad_out,
                                      const at::Tensor& grad_hT,
                                      const at::Tensor& h0,
                                      const at::Tensor& w_hh,
                                      const at::Tensor& out,
                                      const at::Tensor& saved, int64_t mode) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t G = gates_of(mode), K = saved_of(mode), GH = G * H;
  const Kernels<T> k = kernels_for<T>(mode);
  const auto opt = out.options();
  at::Tensor d_gi = empty_big({T_, B, GH}, opt);
  at::Tensor d_ghn = empty_big({T_, B, H}, opt);  // dL/dgh_n, all steps
  // Per-step bias gradients, one row per worker thread (summed at the end).
  const int64_t NW = std::max<int64_t>(1, at::get_num_threads());
  at::Tensor db_steps = at::zeros({T_, NW, GH}, opt);
  at::Tensor dgh = at::empty({B, GH}, opt);       // dL/dgh, this step
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
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* dh_p = cur.data_ptr<T>();
    T* nx_p = nxt.data_ptr<T>();
    const T* hp_p = t == 0 ? h0_p : out_p + (t - 1) * B * H;
    const T* dprev_p = (has_go && t > 0) ? go_p + (t - 1) * B * H : zero_p;
    for_row_chunks(B, H, [&](int64_t b0, int64_t b1, int64_t w) {
      BwdArgs<T> a{dh_p + b0 * H,
                   hp_p + b0 * H,
                   sv_p + (t * B + b0) * K * H,
                   dprev_p + b0 * H,
                   dgi_p + (t * B + b0) * GH,
                   dgh_p + b0 * GH,
                   dghn_p + (t * B + b0) * H,
                   db_p + (t * NW + std::min(w, NW - 1)) * GH,
                   nx_p + b0 * H,
                   b1 - b0,
                   H};
      k.bwd(a);
    });
    nxt.addmm_(dgh, w_hh);  // dh_{t-1} = dh_t z + dout_{t-1} + dgh_t W_hh
    std::swap(cur, nxt);
  }
  // dW_hh = sum_t dgh_t^T h_{t-1}, one GEMM per gate block over all steps.
  // dgh equals dgi except in the n block, whose values are kept in d_ghn.
  at::Tensor d_w = at::empty({GH, H}, opt);
  const at::Tensor gi2 = d_gi.view({T_ * B, GH});
  const at::Tensor ghn2 = d_ghn.view({T_ * B, H});
  const at::Tensor hprev = out.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, H});
  auto block = [&](const at::Tensor& src, int64_t row0, int64_t rows) {
    // src: (T*B, rows) gradients of this block; rows of step 0 pair with h0.
    at::Tensor dst = d_w.narrow(0, row0, rows);
    at::mm_out(dst, src.narrow(0, 0, B).t(), h0);
    if (T_ > 1) dst.addmm_(src.narrow(0, B, (T_ - 1) * B).t(), hprev);
  };
  block(gi2.narrow(1, 0, 2 * H), 0, 2 * H);
  block(ghn2, 2 * H, H);
  if (G == 4) block(gi2.narrow(1, 3 * H, H), 3 * H, H);
  at::Tensor d_b = db_steps.view({T_ * NW, GH}).sum(0);
  return {d_gi, cur, d_w, d_b};
}
void check_inputs(const at::Tensor& gi, const at::Tensor& h0,
                  const at::Tensor& w_hh, const at::Tensor& b_hh, int64_t mode) {
  TORCH_CHECK(mode == kSigmoid || mode == kRefine || mode == kSst,
              "soensim gru_cpu: unknown mode id ", mode);
  TORCH_CHECK(gi.device().is_cpu(), "soensim gru_cpu: gi must be on the CPU");
  TORCH_CHECK(gi.dim() == 3 && h0.dim() == 2 && w_hh.dim() == 2 && b_hh.dim() == 1,
              "soensim gru_cpu: bad ranks");
  const int64_t G = gates_of(static_cast<int>(mode));
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  TORCH_CHECK(T_ > 0, "soensim gru_cpu: empty sequence");
  TORCH_CHECK(h0.size(0) == B && gi.size(2) == G * H && w_hh.size(0) == G * H &&
                  w_hh.size(1) == H && b_hh.size(0) == G * H,
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
                                    const at::Tensor& w_hh, const at::Tensor& b_hh,
                                    int64_t mode, bool save) {
  check_inputs(gi, h0, w_hh, b_hh, mode);
  c10::NoGradGuard no_grad;
  const int64_t T_ = gi.size(0), B = gi.size(1), H = h0.size(1);
  const int64_t K = saved_of(static_cast<int>(mode));
  at::Tensor out = empty_big({T_, B, H}, gi.options());
  at::Tensor saved = save ? empty_big({T_, B, K * H}, gi.options())
                          : at::empty({0}, gi.options());
  // A contiguous W_hh^T packs a little faster in the per-step GEMM than the
  // transposed view (measured ~3-5%); it costs one small copy per call.
  const at::Tensor w_t = w_hh.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "soensim_gru_forward", [&] {
    forward_loop<scalar_t>(gi, h0, w_t, b_hh, out, save ? &saved : nullptr, mode);
  });
  return {out, saved};
}

// grad_out / grad_hT may be None.  Returns {d_gi, d_h0, d_w_hh, d_b_hh}.
std::vector<at::Tensor> gru_backward(const std::optional<at::Tensor>& grad_out,
                                     const std::optional<at::Tensor>& grad_hT,
                                     const at::Tensor& h0, const at::Tensor& w_hh,
                                     const at::Tensor& out, const at::Tensor& saved,
                                     int64_t mode) {
  TORCH_CHECK(mode == kSigmoid || mode == kRefine || mode == kSst,
              "soensim gru_cpu: unknown mode id ", mode);
  c10::NoGradGuard no_grad;
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t K = saved_of(static_cast<int>(mode));
  TORCH_CHECK(T_ > 0 && saved.dim() == 3 && saved.size(0) == T_ &&
                  saved.size(1) == B && saved.size(2) == K * H,
              "soensim gru_cpu: saved activations missing or of the wrong shape");
  TORCH_CHECK(out.is_contiguous() && saved.is_contiguous() && h0.is_contiguous() &&
                  w_hh.is_contiguous(),
              "soensim gru_cpu: saved tensors must be contiguous");
  at::Tensor go, gh;
  if (grad_out.has_value() && grad_out->defined()) go = grad_out->contiguous();
  if (grad_hT.has_value() && grad_hT->defined()) gh = grad_hT->contiguous();
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "soensim_gru_backward", [&] {
    res = backward_loop<scalar_t>(go, gh, h0, w_hh, out, saved, mode);
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

// An uninitialized contiguous tensor from the buffer pool (used by the Python
// side for the input projection, the other large per-step-invariant buffer).
at::Tensor empty_pooled(at::IntArrayRef size, at::ScalarType dtype) {
  return empty_big(size, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

// Buffer pool control: {cached bytes, cached blocks, hits, misses, limit bytes}.
std::vector<int64_t> pool_stats() { return BufferPool::instance().stats(); }
void pool_clear() { BufferPool::instance().clear(); }
void pool_set_limit(int64_t bytes) { BufferPool::instance().set_limit(bytes); }

// Registered as torch.ops.soensim_gru.*; the Python side wraps them in an
// autograd.Function (gates/kernels/cpu.py).
TORCH_LIBRARY(soensim_gru, m) {
  m.def("forward(Tensor gi, Tensor h0, Tensor w_hh, Tensor b_hh, int mode, bool save) -> Tensor[]");
  m.def("backward(Tensor? grad_out, Tensor? grad_hT, Tensor h0, Tensor w_hh, Tensor out, Tensor saved, int mode) -> Tensor[]");
  m.def("fast_sigmoid(Tensor x) -> Tensor");
  m.def("fast_tanh(Tensor x) -> Tensor");
  m.def("empty_pooled(int[] size, ScalarType dtype) -> Tensor", &empty_pooled);
  m.def("pool_stats() -> int[]", &pool_stats);
  m.def("pool_clear() -> ()", &pool_clear);
  m.def("pool_set_limit(int bytes) -> ()", &pool_set_limit);
}

TORCH_LIBRARY_IMPL(soensim_gru, CPU, m) {
  m.impl("forward", &gru_forward);
  m.impl("backward", &gru_backward);
  m.impl("fast_sigmoid", &fast_sigmoid);
  m.impl("fast_tanh", &fast_tanh);
}
