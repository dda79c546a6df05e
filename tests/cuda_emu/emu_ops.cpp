// Test-only op namespace `transxnet_ops_emu`: the CUDA entry points of csrc/*/*_cuda_bind.cpp, compiled for the
// CPU test emulator, registered for CPU tensors with the schemas of csrc/ops.cpp, plus the emulator's controls
// and self-test kernels. Built by tests/cuda_emu/build.py, which generates emu_generated.h (schemas, and which
// op families have a CUDA binding in csrc).
//
// Every CUDA entry point runs inside a CallScope: while it runs, CPU allocations made on this thread (the
// outputs and workspaces the binding allocates) come back filled with 0xFF bytes (NaN in every float type)
// and surrounded by 4 KB guard zones; when it returns, a changed guard byte (a write out of bounds) or a CUDA
// error the host code left unchecked fails the call.
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "emu_generated.h"
#include "op_impls.h"
#include "selftest.h"
#include "txn_emu/runtime.h"

namespace txn_emu {
void configure(const char* schedule, uint64_t seed);
const char* schedule();
double set_timeout(double seconds);
void stats(uint64_t* launches, uint64_t* blocks, uint64_t* switches);
}  // namespace txn_emu

namespace txn_emu_torch {
namespace {

constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xa5;

struct Guarded;
thread_local bool t_armed = false;
thread_local std::vector<Guarded*>* t_live = nullptr;  // allocations of the running call
std::mutex g_violations_mutex;
std::vector<std::string> g_violations;

// The guard zones of one allocation: [kGuardBytes][payload, padded to 64 bytes][kGuardBytes].
struct Guarded {
  c10::DataPtr inner;
  size_t bytes, padded;
  bool live_in_call = true;

  char* payload() const { return static_cast<char*>(inner.get()) + kGuardBytes; }

  // Describes the first changed guard byte, or returns an empty string.
  std::string check() const {
    const auto* base = static_cast<const unsigned char*>(inner.get());
    for (size_t i = kGuardBytes; i-- > 0;) {
      if (base[i] != kGuardByte) {
        return "a write " + std::to_string(kGuardBytes - i) + " byte(s) before the start of a " +
               std::to_string(bytes) + "-byte buffer";
      }
    }
    const unsigned char* tail = base + kGuardBytes + bytes;
    for (size_t i = 0; i < padded - bytes + kGuardBytes; ++i) {
      if (tail[i] != kGuardByte) {
        return "a write " + std::to_string(i) + " byte(s) past the end of a " + std::to_string(bytes) +
               "-byte buffer";
      }
    }
    return {};
  }

  static void deleter(void* ctx) {
    auto* g = static_cast<Guarded*>(ctx);
    const std::string problem = g->check();
    if (!problem.empty()) {
      std::lock_guard<std::mutex> lock(g_violations_mutex);
      g_violations.push_back(problem + " (found when it was freed)");
    }
    if (g->live_in_call && t_live) {
      auto& v = *t_live;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (*it == g) {
          v.erase(it);
          break;
        }
      }
    }
    delete g;
  }
};

// Installed as torch's CPU allocator only while an emulated entry point runs; allocations of other threads, or
// of this one when not armed, go straight to the allocator it replaced.
class GuardingAllocator final : public c10::Allocator {
 public:
  c10::Allocator* base_ = nullptr;

  c10::DataPtr allocate(size_t n) override {
    if (!t_armed || n == 0) return base_->allocate(n);
    const size_t padded = (n + 63) / 64 * 64;
    auto* g = new Guarded{base_->allocate(kGuardBytes + padded + kGuardBytes), n, padded};
    auto* base = static_cast<unsigned char*>(g->inner.get());
    std::memset(base, kGuardByte, kGuardBytes);
    std::memset(base + kGuardBytes, 0xff, n);
    std::memset(base + kGuardBytes + n, kGuardByte, padded - n + kGuardBytes);
    if (t_live) t_live->push_back(g);
    return {g->payload(), g, &Guarded::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }  // for unarmed allocations
};

GuardingAllocator g_allocator;

class CallScope {
 public:
  explicit CallScope(const char* op) : op_(op) {
    previous_ = c10::GetCPUAllocator();
    if (previous_ != &g_allocator) {
      g_allocator.base_ = previous_;
      c10::SetCPUAllocator(&g_allocator, /*priority=*/0);
    }
    (void)cudaGetLastError();  // a stale error must not be blamed on this call
    {
      std::lock_guard<std::mutex> lock(g_violations_mutex);
      g_violations.clear();
    }
    t_live = &live_;
    t_armed = true;
  }
  ~CallScope() { disarm(); }

  // Called when the entry point returned normally.
  void finish() {
    disarm();
    std::vector<std::string> problems;
    for (Guarded* g : live_) {
      const std::string p = g->check();
      if (!p.empty()) problems.push_back(p);
    }
    {
      std::lock_guard<std::mutex> lock(g_violations_mutex);
      problems.insert(problems.end(), g_violations.begin(), g_violations.end());
      g_violations.clear();
    }
    for (Guarded* g : live_) g->live_in_call = false;
    live_.clear();
    TORCH_CHECK(problems.empty(), op_, ": out-of-bounds write into an output or workspace (cuda emulator guard zones): ",
                problems.front());
    const cudaError_t pending = cudaGetLastError();
    TORCH_CHECK(pending == cudaSuccess, op_, ": returned while a CUDA error was pending (a launch was not checked): ",
                cudaGetErrorString(pending));
  }

 private:
  void disarm() {
    t_armed = false;
    if (t_live == &live_) t_live = nullptr;
    if (previous_ != &g_allocator) c10::SetCPUAllocator(previous_, /*priority=*/0);
  }
  const char* op_;
  c10::Allocator* previous_;
  std::vector<Guarded*> live_;
};

template <class F>
auto guarded(const char* op, F&& f) {
  CallScope scope(op);
  auto result = f();
  scope.finish();
  return result;
}

}  // namespace
}  // namespace txn_emu_torch

namespace transxnet_ops {

// `<op>_<forward|backward>_emu`: the CUDA entry point, run inside a CallScope. The TRANSXNET_REGISTER_* macros of
// op_impls.h paste these names (device "emu").
#define TXN_EMU_WRAP(entry)                                                                    \
  constexpr auto entry##_emu = [](auto&&... args) {                                            \
    return txn_emu_torch::guarded(#entry "_cuda", [&] { return entry##_cuda(args...); });      \
  };
TXN_EMU_WRAP(idconv_forward)
TXN_EMU_WRAP(idconv_backward)
TXN_EMU_WRAP(osra_attention_forward)
TXN_EMU_WRAP(osra_attention_backward)
TXN_EMU_WRAP(dwconv2d_forward)
TXN_EMU_WRAP(dwconv2d_backward)
TXN_EMU_WRAP(osra_reduce_forward)
TXN_EMU_WRAP(osra_reduce_backward)
TXN_EMU_WRAP(idconv_weights_forward)
TXN_EMU_WRAP(idconv_weights_backward)
#undef TXN_EMU_WRAP

namespace {

std::vector<std::string> emu_ops() {
  std::vector<std::string> ops;
#if TXN_EMU_HAS_IDCONV
  ops.emplace_back("idconv");
#endif
#if TXN_EMU_HAS_OSRA
  ops.emplace_back("osra_attention");
#endif
#if TXN_EMU_HAS_DWCONV
  ops.emplace_back("dwconv2d");
#endif
#if TXN_EMU_HAS_REDUCE
  ops.emplace_back("reduce");
#endif
  return ops;
}

void emu_configure(const std::string& schedule, int64_t seed) {
  txn_emu::configure(schedule.c_str(), static_cast<uint64_t>(seed));
}

std::vector<int64_t> emu_stats() {
  uint64_t launches, blocks, switches;
  txn_emu::stats(&launches, &blocks, &switches);
  return {static_cast<int64_t>(launches), static_cast<int64_t>(blocks), static_cast<int64_t>(switches)};
}

// Runs a self-test kernel of tests/cuda_emu/selftest*.cu on the given buffers; returns the CUDA error code
// of its launch(es) (0 = success) - the message is in emu_error_string.
int64_t emu_selftest(const std::string& name, const std::vector<at::Tensor>& buffers, const std::vector<int64_t>& args) {
  std::vector<void*> ptrs;
  for (const at::Tensor& t : buffers) {
    TORCH_CHECK(t.is_contiguous(), "emu_selftest: buffers must be contiguous");
    ptrs.push_back(t.data_ptr());
  }
  bool found = false;
  (void)cudaGetLastError();
  const cudaError_t err = txn_emu_selftest(name.c_str(), ptrs.data(), static_cast<int>(ptrs.size()), args.data(),
                                           static_cast<int>(args.size()), &found);
  TORCH_CHECK(found, "emu_selftest: no self-test named '", name, "'");
  return static_cast<int64_t>(err);
}

// A self-test whose output the *binding side* allocates, inside a CallScope (exercises the guard zones).
at::Tensor emu_selftest_alloc(const std::string& name, int64_t n, int64_t overrun) {
  return txn_emu_torch::guarded("emu_selftest_alloc", [&] {
    at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
    const int64_t args[] = {n, overrun};
    void* ptrs[] = {out.data_ptr()};
    bool found = false;
    const cudaError_t err = txn_emu_selftest(name.c_str(), ptrs, 1, args, 2, &found);
    TORCH_CHECK(found, "emu_selftest_alloc: no self-test named '", name, "'");
    TORCH_CHECK(err == cudaSuccess, "emu_selftest_alloc: ", cudaGetErrorString(err));
    return out;
  });
}

}  // namespace

TORCH_LIBRARY(transxnet_ops_emu, m) {
  TXN_EMU_OP_SCHEMAS(m)  // the schemas of csrc/ops.cpp
  m.def("emu_ops() -> str[]");
  m.def("emu_configure(str schedule, int seed) -> ()");
  m.def("emu_schedule() -> str");
  m.def("emu_stats() -> int[]");
  m.def("emu_error_string(int code) -> str");
  m.def("emu_require_current_stream(bool on) -> bool");
  m.def("emu_set_timeout(float seconds) -> float");
  m.def("emu_selftest(str name, Tensor(a!)[] buffers, int[] args) -> int");
  m.def("emu_selftest_alloc(str name, int n, int overrun) -> Tensor");
  m.impl("emu_ops", &emu_ops);
  m.impl("emu_configure", &emu_configure);
  m.impl("emu_schedule", [] { return std::string(txn_emu::schedule()); });
  m.impl("emu_stats", &emu_stats);
  m.impl("emu_error_string", [](int64_t code) { return std::string(cudaGetErrorString(static_cast<cudaError_t>(code))); });
  m.impl("emu_require_current_stream", [](bool on) { return txn_emu::set_require_current_stream(on); });
  m.impl("emu_set_timeout", [](double seconds) { return txn_emu::set_timeout(seconds); });
  m.impl("emu_selftest", &emu_selftest);
  m.impl("emu_selftest_alloc", &emu_selftest_alloc);
}

TORCH_LIBRARY_IMPL(transxnet_ops_emu, CPU, m) {
#if TXN_EMU_HAS_IDCONV
  TRANSXNET_REGISTER_IDCONV(m, emu)
#endif
#if TXN_EMU_HAS_OSRA
  TRANSXNET_REGISTER_OSRA(m, emu)
#endif
#if TXN_EMU_HAS_DWCONV
  TRANSXNET_REGISTER_DWCONV(m, emu)
#endif
#if TXN_EMU_HAS_REDUCE
  TRANSXNET_REGISTER_REDUCE(m, emu)
#endif
}

}  // namespace transxnet_ops
