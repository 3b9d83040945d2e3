// Fused CPU recurrences: the buffer pool, the op registration and the float
// approximations exposed for tests.  The time loops are in gru_cpu.cpp and
// lstm_cpu.cpp (shared pieces: rnn_cpu.h); the Python side (gates/kernels/cpu.py)
// wraps the ops in autograd Functions.
//
// Ops (torch.ops.soensim_rnn.*): gru_forward, gru_backward, lstm_forward,
// lstm_backward, empty_pooled, pool_*, fast_sigmoid / fast_tanh.

#include "rnn_cpu.h"

#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <cstdlib>
#include <list>
#include <mutex>

namespace soen {
namespace {

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

}  // namespace

at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  return BufferPool::instance().empty(sizes, opt);
}

at::Tensor zeros_big(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  at::Tensor t = empty_big(sizes, opt);
  t.zero_();
  return t;
}

at::Tensor contiguous_big(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  at::Tensor out = empty_big(t.sizes(), t.options());
  out.copy_(t);
  return out;
}

Mode make_mode(int64_t act, bool refine, int64_t master, int64_t M, int64_t H) {
  const Mode m{act, refine, master, M};
  bool known = false;
#define SOEN_KNOWN(A, RF, MS, NAME) \
  known = known || (m.act == A && m.refine == RF && m.master == MS);
  SOEN_MODES(SOEN_KNOWN)
#undef SOEN_KNOWN
  TORCH_CHECK(known, "soensim rnn_cpu: no compiled mode with activation ", m.act, ", refine ",
              m.refine, ", master ", m.master);
  TORCH_CHECK(m.master == kNoMaster ? m.M == 0 : (m.M > 0 && H % m.M == 0),
              "soensim rnn_cpu: master units must divide H (", m.M, " vs ", H, ")");
  return m;
}

namespace {

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

}  // namespace
}  // namespace soen

TORCH_LIBRARY(soensim_rnn, m) {
  m.def("gru_forward(Tensor gi, Tensor h0, Tensor w_hh, Tensor b_hh, int act, bool refine, "
        "int master, int master_units, bool save) -> Tensor[]");
  m.def("gru_backward(Tensor? grad_out, Tensor? grad_hT, Tensor h0, Tensor w_hh, Tensor out, "
        "Tensor saved, int act, bool refine, int master, int master_units) -> Tensor[]");
  m.def("lstm_forward(Tensor gi, Tensor h0, Tensor c0, Tensor w_hh, Tensor b_hh, int act, "
        "bool refine, int master, int master_units, bool save) -> Tensor[]");
  m.def("lstm_backward(Tensor? grad_out, Tensor? grad_hT, Tensor? grad_cT, Tensor h0, Tensor c0, "
        "Tensor w_hh, Tensor out, Tensor saved, int act, bool refine, int master, "
        "int master_units) -> Tensor[]");
  m.def("fast_sigmoid(Tensor x) -> Tensor");
  m.def("fast_tanh(Tensor x) -> Tensor");
  m.def("empty_pooled(int[] size, ScalarType dtype) -> Tensor", &soen::empty_pooled);
  m.def("pool_stats() -> int[]", &soen::pool_stats);
  m.def("pool_clear() -> ()", &soen::pool_clear);
  m.def("pool_set_limit(int bytes) -> ()", &soen::pool_set_limit);
}

TORCH_LIBRARY_IMPL(soensim_rnn, CPU, m) {
  m.impl("gru_forward", &soen::gru_forward);
  m.impl("gru_backward", &soen::gru_backward);
  m.impl("lstm_forward", &soen::lstm_forward);
  m.impl("lstm_backward", &soen::lstm_backward);
  m.impl("fast_sigmoid", &soen::fast_sigmoid);
  m.impl("fast_tanh", &soen::fast_tanh);
}
