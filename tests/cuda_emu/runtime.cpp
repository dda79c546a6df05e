// CUDA-on-CPU test emulator: the engine behind txn_emu/runtime.h and txn_emu/device.h.
// A launch is validated like CUDA validates it, then its blocks run one after another on the calling thread;
// the threads of a block are fibers (x86-64: a 20-instruction context switch; elsewhere ucontext) with their own
// mmap'ed stacks and guard pages. See device.h for the execution model and tests/cuda_emu/README.md for limits.
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "txn_emu/device.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TXN_EMU_ASAN 1
#else
#define TXN_EMU_ASAN 0
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace txn_emu {

uint3 g_thread_idx;
uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

// ------------------------------------------------------------------------------------------------ contexts
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void txn_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type txn_emu_switch,@function
txn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size txn_emu_switch,.-txn_emu_switch

  .p2align 4
  .type txn_emu_fiber_entry,@function
txn_emu_fiber_entry:
  movq %r12, %rdi
  call txn_emu_fiber_main
  ud2
  .size txn_emu_fiber_entry,.-txn_emu_fiber_entry
)");
extern "C" void txn_emu_fiber_entry();
#else
struct Context {
  ucontext_t uc;
};
#endif

// ------------------------------------------------------------------------------------------------ state
enum class State : uint8_t { Ready, Blocked, Done };
enum class Wait : uint8_t { None, Block, Warp };

struct Fiber {
  Context ctx;
  char* stack_lo = nullptr;  // usable stack [stack_lo, stack_lo + stack_bytes)
  State state = State::Ready;
  Wait wait = Wait::None;
  uint3 tid{};
  int linear = 0;
  // block barrier this thread waits at
  const char* what = nullptr;
  const char* file = nullptr;
  int line = 0;
  int predicate = 0;
  int result = 0;
  WarpOp* warp_op = nullptr;
#if TXN_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

enum class Schedule { Forward, Reverse, Shuffle, Vary };

struct Engine {
  std::recursive_mutex mutex;  // one launch at a time in the process

  // errors (CUDA semantics: recorded, returned and cleared by cudaGetLastError)
  cudaError_t last_error = cudaSuccess;
  cudaError_t detail_code = cudaSuccess;
  std::string detail;
  std::string error_text;

  // configuration
  Schedule schedule = Schedule::Vary;
  uint64_t seed = 0;
  bool poison = true;
  bool require_current_stream = true;
  size_t stack_bytes = 256 * 1024;
  double timeout_s = 120;  // CPU seconds a launch may take before the watchdog fails it (a hang otherwise)
  std::unordered_map<const void*, int> max_dynamic_smem;

  // statistics (tests use them to prove kernels ran)
  uint64_t launches = 0, blocks = 0, switches = 0;
  uint64_t launch_index = 0;  // since the last configure(): seeds the shuffles reproducibly

  // the launch being run
  const KernelLaunch* kernel = nullptr;
  int nthreads = 0;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  Context scheduler;
  int block_waiting = 0;
  int done = 0;
  unsigned warp_posted[32] = {};
  WarpOp* warp_ops[32][32] = {};
  bool failed = false;
  cudaError_t fail_code = cudaSuccess;
  char fail_message[1024] = {};
  uint64_t block_epoch = 0;
  struct SharedArray {
    void* ptr;
    uint64_t block_epoch;  // last block that poisoned it
    uint64_t launch;       // last launch that counted it
  };
  std::vector<SharedArray> shared_arrays;
  size_t static_smem_bytes = 0;  // static __shared__ bytes this launch has touched
  int smem_attribute = -1;       // the kernel's MaxDynamicSharedMemorySize attribute, -1 when never set
  std::vector<unsigned char> dynamic_smem;
  size_t dynamic_smem_bytes = 0;

  // fiber stacks: one mapping, a PROT_NONE guard page below every stack
  char* stack_pool = nullptr;
  size_t stack_pool_bytes = 0;
  size_t stack_stride = 0;
  int stack_count = 0;
#if TXN_EMU_ASAN
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
  bool in_fiber = false;
};

Engine& engine() {
  static Engine* e = [] {
    auto* en = new Engine();
    if (const char* s = std::getenv("TXN_EMU_SCHEDULE")) {
      const std::string v(s);
      en->schedule = v == "forward" ? Schedule::Forward
                     : v == "reverse" ? Schedule::Reverse
                     : v == "shuffle" ? Schedule::Shuffle
                                      : Schedule::Vary;
    }
    if (const char* s = std::getenv("TXN_EMU_SEED")) en->seed = std::strtoull(s, nullptr, 10);
    if (const char* s = std::getenv("TXN_EMU_STACK_KB")) en->stack_bytes = std::strtoull(s, nullptr, 10) * 1024;
    if (const char* s = std::getenv("TXN_EMU_POISON")) en->poison = std::string(s) != "0";
    if (const char* s = std::getenv("TXN_EMU_TIMEOUT_S")) en->timeout_s = std::strtod(s, nullptr);
    return en;
  }();
  return *e;
}

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void make_order(std::vector<int>& order, int n, Schedule s, uint64_t seed) {
  order.resize(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  if (s == Schedule::Reverse) {
    for (int i = 0; i < n; ++i) order[i] = n - 1 - i;
  } else if (s == Schedule::Shuffle) {
    uint64_t st = seed;
    for (int i = n - 1; i > 0; --i) std::swap(order[i], order[splitmix(st) % (i + 1)]);
  }
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::Forward: return "forward";
    case Schedule::Reverse: return "reverse";
    case Schedule::Shuffle: return "shuffle";
    case Schedule::Vary: return "vary";
  }
  return "?";
}

// ------------------------------------------------------------------------------------------------ switching
void switch_context(Context& from, Context& to, const void* to_stack_lo, size_t to_stack_size, void** fake_save) {
#if TXN_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_save, to_stack_lo, to_stack_size);
#else
  (void)to_stack_lo;
  (void)to_stack_size;
  (void)fake_save;
#endif
#if defined(__x86_64__)
  txn_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

void after_switch_back(void* fake) {
#if TXN_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)fake;
#endif
}

// Fiber -> scheduler. `dying`: the fiber will never resume (its fake stack can go).
void yield_to_scheduler(Engine& e, Fiber& f, bool dying) {
  ++e.switches;
#if TXN_EMU_ASAN
  switch_context(f.ctx, e.scheduler, e.main_stack_bottom, e.main_stack_size, dying ? nullptr : &f.fake_stack);
  after_switch_back(f.fake_stack);
#else
  (void)dying;
  switch_context(f.ctx, e.scheduler, nullptr, 0, nullptr);
#endif
}

[[noreturn]] void abort_block(Engine& e) {
  Fiber& f = *e.current;
  f.state = State::Done;
  yield_to_scheduler(e, f, /*dying=*/true);
  std::abort();  // never resumed
}

void set_failure(Engine& e, cudaError_t code, const char* msg) {
  if (e.failed) return;
  e.failed = true;
  e.fail_code = code;
  char thread[64] = "";
  if (const Fiber* f = e.current) std::snprintf(thread, sizeof(thread), ", thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
  std::snprintf(e.fail_message, sizeof(e.fail_message), "%s (launched at %s:%d), block (%u,%u,%u)%s: %s",
                e.kernel ? e.kernel->name : "?", e.kernel ? e.kernel->file : "?", e.kernel ? e.kernel->line : 0,
                g_block_idx.x, g_block_idx.y, g_block_idx.z, thread, msg);
}

}  // namespace

extern "C" __attribute__((visibility("hidden"), used)) void txn_emu_fiber_main(void* fiber) {
  Fiber* f = static_cast<Fiber*>(fiber);
  Engine& e = engine();
#if TXN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &e.main_stack_bottom, &e.main_stack_size);
#endif
  e.kernel->invoke(e.kernel->payload);
  f->state = State::Done;
  ++e.done;
  yield_to_scheduler(e, *f, /*dying=*/true);
  std::abort();  // a finished fiber is never resumed
}

namespace {

#if !defined(__x86_64__)
void ucontext_entry(unsigned hi, unsigned lo) {
  txn_emu_fiber_main(reinterpret_cast<void*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void ensure_stacks(Engine& e, int n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t stack = (e.stack_bytes + page - 1) / page * page;
  if (e.stack_pool && e.stack_count >= n && e.stack_stride == stack + page) return;
  if (e.stack_pool) munmap(e.stack_pool, e.stack_pool_bytes);
  const int count = std::max(n, 128);
  e.stack_stride = stack + page;
  e.stack_pool_bytes = e.stack_stride * count;
  void* p = mmap(nullptr, e.stack_pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "txn_emu: cannot map %zu bytes of fiber stacks\n", e.stack_pool_bytes);
    std::abort();
  }
  e.stack_pool = static_cast<char*>(p);
  e.stack_count = count;
  for (int i = 0; i < count; ++i) mprotect(e.stack_pool + i * e.stack_stride, page, PROT_NONE);  // guard page
}

void init_fiber(Engine& e, Fiber& f, int i) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  f.stack_lo = e.stack_pool + i * e.stack_stride + page;
  const size_t size = e.stack_stride - page;
#if TXN_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(f.stack_lo, size);
  f.fake_stack = nullptr;
#endif
#if defined(__x86_64__)
  // Frame that txn_emu_switch pops: control words, r15..r12 (r12 = fiber), rbx, rbp, return address.
  char* top = f.stack_lo + size;
  top -= reinterpret_cast<uintptr_t>(top) % 16;
  auto* words = reinterpret_cast<uint64_t*>(top - 88);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memset(words, 0, 88);
  std::memcpy(reinterpret_cast<char*>(words), &fpucw, 2);      // top-88: x87 control word
  std::memcpy(reinterpret_cast<char*>(words) + 8, &mxcsr, 4);  // top-80: MXCSR
  words[2] = 0;                                                // r15
  words[3] = 0;                                                // r14
  words[4] = 0;                                                // r13
  words[5] = reinterpret_cast<uint64_t>(&f);                   // r12
  words[6] = 0;                                                // rbx
  words[7] = 0;                                                // rbp
  words[8] = reinterpret_cast<uint64_t>(&txn_emu_fiber_entry);  // return address
  f.ctx.sp = words;
#else
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = f.stack_lo;
  f.ctx.uc.uc_stack.ss_size = size;
  f.ctx.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
#endif
}

// Scheduler -> fiber; returns when the fiber blocks, finishes or faults.
void resume(Engine& e, Fiber& f) {
  e.current = &f;
  g_thread_idx = f.tid;
  ++e.switches;
  e.in_fiber = true;
#if TXN_EMU_ASAN
  void* fake = nullptr;
  switch_context(e.scheduler, f.ctx, f.stack_lo, e.stack_stride - static_cast<size_t>(sysconf(_SC_PAGESIZE)), &fake);
  after_switch_back(fake);
#else
  switch_context(e.scheduler, f.ctx, nullptr, 0, nullptr);
#endif
  e.in_fiber = false;
  e.current = nullptr;
}

// ------------------------------------------------------------------------------------------------ faults
struct SignalState {
  struct sigaction old_segv, old_bus, old_alarm;
  struct itimerval old_timer;
  stack_t old_stack;
  std::vector<char> alt_stack = std::vector<char>(256 * 1024);
};

void on_fault_signal(int sig, siginfo_t* info, void*) {
  Engine& e = engine();
  if (!e.in_fiber || !e.current) {  // not kernel code: let the default action happen
    signal(sig, SIG_DFL);
    return;
  }
  const char* addr = static_cast<const char*>(info->si_addr);
  bool overflow = false;
  if (e.stack_pool && addr >= e.stack_pool && addr < e.stack_pool + e.stack_pool_bytes) {
    const size_t off = static_cast<size_t>(addr - e.stack_pool) % e.stack_stride;
    overflow = off < static_cast<size_t>(sysconf(_SC_PAGESIZE));
  }
  char msg[256];
  if (overflow) {
    std::snprintf(msg, sizeof(msg), "stack overflow of an emulated thread (%zu KB stacks; set TXN_EMU_STACK_KB)",
                  e.stack_bytes / 1024);
  } else {
    std::snprintf(msg, sizeof(msg), "invalid memory access (%s at address %p)", sig == SIGBUS ? "SIGBUS" : "SIGSEGV",
                  info->si_addr);
  }
  set_failure(e, cudaErrorIllegalAddress, msg);
  abort_block(e);
}

// The watchdog: a thread that never reaches a barrier (a spin-wait on another thread, a loop that never ends)
// would hang a cooperative scheduler.
void on_watchdog(int, siginfo_t*, void*) {
  Engine& e = engine();
  if (!e.in_fiber || !e.current) return;  // in the scheduler: it finishes the block by itself
  char msg[256];
  std::snprintf(msg, sizeof(msg),
                "the launch used more than %.0f s of CPU time (an endless loop, or a spin-wait on another thread, "
                "which cooperative threads never end; TXN_EMU_TIMEOUT_S)",
                e.timeout_s);
  set_failure(e, cudaErrorLaunchTimeout, msg);
  abort_block(e);
}

class SignalGuard {
 public:
  SignalGuard() {
#if !TXN_EMU_ASAN
    stack_t ss{};
    ss.ss_sp = state_.alt_stack.data();
    ss.ss_size = state_.alt_stack.size();
    sigaltstack(&ss, &state_.old_stack);
    struct sigaction sa {};
    sa.sa_sigaction = &on_fault_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &state_.old_segv);
    sigaction(SIGBUS, &sa, &state_.old_bus);
#endif
    struct sigaction wd {};
    wd.sa_sigaction = &on_watchdog;
    wd.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&wd.sa_mask);
    sigaction(SIGVTALRM, &wd, &state_.old_alarm);
    struct itimerval t {};
    const double budget = engine().timeout_s > 0 ? engine().timeout_s : 1e9;
    t.it_value.tv_sec = static_cast<time_t>(budget);
    t.it_value.tv_usec = static_cast<suseconds_t>((budget - static_cast<double>(t.it_value.tv_sec)) * 1e6);
    t.it_interval = t.it_value;  // fires again if it hit the scheduler rather than a thread
    setitimer(ITIMER_VIRTUAL, &t, &state_.old_timer);
  }
  ~SignalGuard() {
    setitimer(ITIMER_VIRTUAL, &state_.old_timer, nullptr);
    sigaction(SIGVTALRM, &state_.old_alarm, nullptr);
#if !TXN_EMU_ASAN
    sigaction(SIGSEGV, &state_.old_segv, nullptr);
    sigaction(SIGBUS, &state_.old_bus, nullptr);
    sigaltstack(&state_.old_stack, nullptr);
#endif
  }

 private:
  SignalState state_;
};

// ------------------------------------------------------------------------------------------------ blocks
std::string describe_waits(Engine& e) {
  std::map<std::string, int> sites;
  for (const Fiber& f : e.fibers) {
    if (f.state == State::Done) continue;
    char buf[512];
    if (f.wait == Wait::Block) {
      std::snprintf(buf, sizeof(buf), "%s (%s:%d)", f.what, f.file, f.line);
    } else if (f.wait == Wait::Warp) {
      std::snprintf(buf, sizeof(buf), "%s (%s:%d, mask 0x%08x) in warp %d", f.warp_op->what, f.warp_op->file,
                    f.warp_op->line, f.warp_op->mask, f.linear / 32);
    } else {
      std::snprintf(buf, sizeof(buf), "nothing (runnable)");
    }
    ++sites[buf];
  }
  std::string s;
  for (const auto& [site, n] : sites) s += std::to_string(n) + " thread(s) wait at " + site + "; ";
  s += std::to_string(e.done) + " thread(s) have exited";
  return s;
}

void run_block(Engine& e, uint64_t block_seed) {
  const int n = e.nthreads;
  for (int i = 0; i < n; ++i) {
    Fiber& f = e.fibers[i];
    f.state = State::Ready;
    f.wait = Wait::None;
    f.warp_op = nullptr;
    init_fiber(e, f, i);
  }
  e.done = 0;
  e.block_waiting = 0;
  std::memset(e.warp_posted, 0, sizeof(e.warp_posted));
  ++e.block_epoch;
  if (e.dynamic_smem_bytes) std::memset(dynamic_smem_base(), e.poison ? 0xff : 0, e.dynamic_smem_bytes);
  std::vector<int> order;
  for (uint64_t round = 0; e.done < n; ++round) {
    Schedule s = e.schedule;
    if (s == Schedule::Vary) s = static_cast<Schedule>(round % 3);  // forward, reverse, shuffle
    make_order(order, n, s, block_seed * 0x100000001b3ull + round);
    bool ran = false;
    for (const int i : order) {
      Fiber& f = e.fibers[i];
      if (f.state != State::Ready) continue;
      ran = true;
      resume(e, f);
      if (e.failed) return;
    }
    if (!ran) {
      char msg[1024];
      std::snprintf(msg, sizeof(msg),
                    "deadlock: no thread of the block can proceed (a __syncthreads or warp collective is not reached "
                    "by every thread it waits for: divergent barrier, early return, or a partial mask): %s",
                    describe_waits(e).c_str());
      e.current = nullptr;
      set_failure(e, cudaErrorLaunchFailure, msg);
      return;
    }
  }
  if (e.dynamic_smem_bytes) {  // canaries around the dynamic shared memory
    const auto* p = static_cast<const unsigned char*>(dynamic_smem_base());
    for (size_t i = 1; i <= 64; ++i) {
      if (p[-static_cast<ptrdiff_t>(i)] != 0xa5 || p[e.dynamic_smem_bytes + i - 1] != 0xa5) {
        e.current = nullptr;
        set_failure(e, cudaErrorIllegalAddress,
                    "out-of-bounds write next to the dynamic shared memory (its canary bytes changed)");
        return;
      }
    }
  }
}

const char* cuda_error_text(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    default: return "unrecognized error code";
  }
}

}  // namespace

// ================================================================================================ public API
cudaError_t record_error(cudaError_t err, const char* detail) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  if (err == cudaSuccess) return err;
  e.last_error = err;
  e.detail_code = err;
  e.detail = detail ? detail : "";
  return err;
}

cudaError_t take_last_error() {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const cudaError_t err = e.last_error;
  e.last_error = cudaSuccess;
  return err;
}

cudaError_t peek_last_error() {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  return e.last_error;
}

const char* error_string(cudaError_t err) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  if (err != cudaSuccess && err == e.detail_code && !e.detail.empty()) {
    e.error_text = std::string(cuda_error_text(err)) + " [cuda emulator: " + e.detail + "]";
    return e.error_text.c_str();
  }
  return cuda_error_text(err);
}

const char* error_name(cudaError_t err) {
  switch (err) {
#define TXN_EMU_NAME(x) \
  case x: return #x;
    TXN_EMU_NAME(cudaSuccess)
    TXN_EMU_NAME(cudaErrorInvalidValue)
    TXN_EMU_NAME(cudaErrorInvalidConfiguration)
    TXN_EMU_NAME(cudaErrorLaunchFailure)
    TXN_EMU_NAME(cudaErrorIllegalAddress)
    TXN_EMU_NAME(cudaErrorMisalignedAddress)
    TXN_EMU_NAME(cudaErrorLaunchOutOfResources)
    TXN_EMU_NAME(cudaErrorInvalidDevice)
    TXN_EMU_NAME(cudaErrorInvalidDeviceFunction)
    TXN_EMU_NAME(cudaErrorInvalidResourceHandle)
    TXN_EMU_NAME(cudaErrorAssert)
    TXN_EMU_NAME(cudaErrorNotSupported)
    TXN_EMU_NAME(cudaErrorLaunchTimeout)
#undef TXN_EMU_NAME
    default: return "cudaErrorUnknown";
  }
}

int device_attribute(cudaDeviceAttr attr, bool* known) {
  using L = DeviceLimits;
  *known = true;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: return L::kMaxThreadsPerBlock;
    case cudaDevAttrMaxBlockDimX: return 1024;
    case cudaDevAttrMaxBlockDimY: return 1024;
    case cudaDevAttrMaxBlockDimZ: return L::kMaxBlockDimZ;
    case cudaDevAttrMaxGridDimX: return 2147483647;
    case cudaDevAttrMaxGridDimY: return 65535;
    case cudaDevAttrMaxGridDimZ: return 65535;
    case cudaDevAttrMaxSharedMemoryPerBlock: return L::kDefaultDynamicSmem;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: return L::kMaxDynamicSmemOptin;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: return L::kSmemPerSM;
    case cudaDevAttrTotalConstantMemory: return 65536;
    case cudaDevAttrWarpSize: return 32;
    case cudaDevAttrMaxRegistersPerBlock: return L::kRegsPerBlock;
    case cudaDevAttrMaxRegistersPerMultiprocessor: return 65536;
    case cudaDevAttrMultiProcessorCount: return L::kSMs;
    case cudaDevAttrMaxThreadsPerMultiProcessor: return L::kMaxThreadsPerSM;
    case cudaDevAttrMaxBlocksPerMultiprocessor: return L::kMaxBlocksPerSM;
    case cudaDevAttrComputeCapabilityMajor: return 9;
    case cudaDevAttrComputeCapabilityMinor: return 0;
    case cudaDevAttrL2CacheSize: return 50 * 1024 * 1024;
    case cudaDevAttrClockRate: return 1980000;
    case cudaDevAttrMemoryClockRate: return 2619000;
    case cudaDevAttrGlobalMemoryBusWidth: return 5120;
    case cudaDevAttrConcurrentKernels: return 1;
    default: *known = false; return 0;
  }
}

void fill_device_properties(cudaDeviceProp* p) {
  using L = DeviceLimits;
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "CUDA emulator (H100-like, sm_90)");
  p->totalGlobalMem = size_t(80) << 30;
  p->sharedMemPerBlock = L::kDefaultDynamicSmem;
  p->sharedMemPerBlockOptin = L::kMaxDynamicSmemOptin;
  p->sharedMemPerMultiprocessor = L::kSmemPerSM;
  p->regsPerBlock = L::kRegsPerBlock;
  p->regsPerMultiprocessor = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = L::kMaxThreadsPerBlock;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = L::kMaxBlockDimZ;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = L::kSMs;
  p->maxThreadsPerMultiProcessor = L::kMaxThreadsPerSM;
  p->maxBlocksPerMultiProcessor = L::kMaxBlocksPerSM;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->concurrentKernels = 1;
}

cudaError_t set_func_attribute(const void* func, cudaFuncAttribute attr, int value) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  if (func == nullptr) return record_error(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > DeviceLimits::kMaxDynamicSmemOptin) {
      return record_error(cudaErrorInvalidValue,
                          "cudaFuncAttributeMaxDynamicSharedMemorySize above the 227 KB the device allows");
    }
    e.max_dynamic_smem[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    return (value >= -1 && value <= 100) ? cudaSuccess : record_error(cudaErrorInvalidValue);
  }
  return record_error(cudaErrorInvalidValue, "function attribute not emulated");
}

int func_max_dynamic_smem(const void* func) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const auto it = e.max_dynamic_smem.find(func);
  return it == e.max_dynamic_smem.end() ? DeviceLimits::kDefaultDynamicSmem : it->second;
}

cudaStream_t current_stream() { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(0x7e57c0de0)); }

bool set_require_current_stream(bool on) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const bool was = e.require_current_stream;
  e.require_current_stream = on;
  return was;
}

void fault(cudaError_t err, const char* fmt, ...) {
  Engine& e = engine();
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (!e.in_fiber || !e.current) {
    std::fprintf(stderr, "txn_emu: fault outside kernel code: %s\n", msg);
    std::abort();
  }
  set_failure(e, err, msg);
  abort_block(e);
}

int block_sync(const char* what, const char* file, int line, int predicate, int reduce) {
  Engine& e = engine();
  Fiber& f = *e.current;
  f.wait = Wait::Block;
  f.what = what;
  f.file = file;
  f.line = line;
  f.predicate = predicate != 0;
  f.state = State::Blocked;
  if (++e.block_waiting == e.nthreads) {  // every thread of the block has arrived (none has exited)
    int count = 0;
    for (const Fiber& o : e.fibers) {
      if (o.line != line || std::strcmp(o.file, file) != 0 || std::strcmp(o.what, what) != 0) {
        char msg[512];
        std::snprintf(msg, sizeof(msg), "divergent barrier: thread %d waits at %s (%s:%d) while thread %d waits at %s (%s:%d)",
                      o.linear, o.what, o.file, o.line, f.linear, what, file, line);
        set_failure(e, cudaErrorLaunchFailure, msg);
        abort_block(e);
      }
      count += o.predicate;
    }
    const int result = reduce == 1 ? count : reduce == 2 ? (count == e.nthreads) : reduce == 3 ? (count > 0) : 0;
    for (Fiber& o : e.fibers) {
      o.state = State::Ready;
      o.wait = Wait::None;
      o.result = result;
    }
    e.block_waiting = 0;
  }
  yield_to_scheduler(e, f, /*dying=*/false);
  return f.result;
}

void check_launch_bounds(const char* file, int line, int max_threads, int, int) {
  const uint64_t threads = uint64_t(g_block_dim.x) * g_block_dim.y * g_block_dim.z;
  if (max_threads > 0 && threads > static_cast<uint64_t>(max_threads)) {
    fault(cudaErrorLaunchOutOfResources, "launched with %llu threads per block, more than its __launch_bounds__(%d) (%s:%d)",
          static_cast<unsigned long long>(threads), max_threads, file, line);
  }
}

unsigned lane_id() { return static_cast<unsigned>(engine().current->linear & 31); }

void warp_sync(WarpOp& op) {
  Engine& e = engine();
  Fiber& f = *e.current;
  const int lane = f.linear & 31, warp = f.linear / 32;
  const int lanes_here = std::min(32, e.nthreads - warp * 32);
  const unsigned existing = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  if (!(op.mask >> lane & 1u)) {
    fault(cudaErrorLaunchFailure, "%s at %s:%d: the calling lane %d is not in its mask 0x%08x", op.what, op.file,
          op.line, lane, op.mask);
  }
  if (op.mask & ~existing) {
    fault(cudaErrorLaunchFailure, "%s at %s:%d: mask 0x%08x names lanes that do not exist (warp %d has %d lanes)",
          op.what, op.file, op.line, op.mask, warp, lanes_here);
  }
  e.warp_ops[warp][lane] = &op;
  e.warp_posted[warp] |= 1u << lane;
  f.warp_op = &op;
  f.wait = Wait::Warp;
  f.state = State::Blocked;
  if ((e.warp_posted[warp] & op.mask) == op.mask) {  // the last lane of the mask has arrived
    WarpOp* lanes[32] = {};
    for (int l = 0; l < 32; ++l) {
      if (!(op.mask >> l & 1u)) continue;
      WarpOp* o = e.warp_ops[warp][l];
      if (o->line != op.line || std::strcmp(o->file, op.file) != 0 || std::strcmp(o->what, op.what) != 0 ||
          o->mask != op.mask || o->resolve != op.resolve || o->width != op.width || o->kind != op.kind) {
        fault(cudaErrorLaunchFailure,
              "divergent warp collective in warp %d: lane %d is at %s (%s:%d, mask 0x%08x), lane %d at %s (%s:%d, "
              "mask 0x%08x)",
              warp, l, o->what, o->file, o->line, o->mask, lane, op.what, op.file, op.line, op.mask);
      }
      lanes[l] = o;
    }
    op.resolve(lanes, op.mask);
    for (int l = 0; l < 32; ++l) {
      if (!(op.mask >> l & 1u)) continue;
      Fiber& o = e.fibers[warp * 32 + l];
      o.state = State::Ready;
      o.wait = Wait::None;
      o.warp_op = nullptr;
      e.warp_ops[warp][l] = nullptr;
    }
    e.warp_posted[warp] &= ~op.mask;
  }
  yield_to_scheduler(e, f, /*dying=*/false);
}

void resolve_vote(WarpOp* const* lanes, unsigned mask) {
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (lanes[l] && *static_cast<const int*>(lanes[l]->in)) ballot |= 1u << l;
  }
  const int kind = lanes[__builtin_ctz(mask)]->kind;
  const unsigned result = kind == kVoteBallot ? ballot : kind == kVoteAll ? (ballot == mask) : (ballot != 0);
  for (int l = 0; l < 32; ++l) {
    if (lanes[l]) *static_cast<unsigned*>(lanes[l]->out) = result;
  }
}

void* dynamic_smem_base() {
  Engine& e = engine();
  if (!e.dynamic_smem_bytes) return nullptr;
  // 128-byte aligned, with at least 64 canary bytes on both sides
  const uintptr_t base = reinterpret_cast<uintptr_t>(e.dynamic_smem.data()) + 64;
  return reinterpret_cast<void*>((base + 127) / 128 * 128);
}

bool shared_touch(std::initializer_list<SharedRegion> regions) {
  Engine& e = engine();
  if (!e.in_fiber) return true;  // namespace-scope __shared__: initialised once, never poisoned
  for (const SharedRegion& r : regions) {
    Engine::SharedArray* a = nullptr;
    for (auto& s : e.shared_arrays) {
      if (s.ptr == r.ptr) a = &s;
    }
    if (!a) a = &e.shared_arrays.emplace_back(Engine::SharedArray{r.ptr, 0, 0});
    if (a->block_epoch != e.block_epoch) {
      if (e.poison) std::memset(r.ptr, 0xff, r.bytes);
      a->block_epoch = e.block_epoch;
    }
    if (a->launch != e.launches) {  // first time this launch: count it against the shared-memory budget
      a->launch = e.launches;
      e.static_smem_bytes += r.bytes;
      // CUDA: by default static + dynamic <= 48 KB; a raised dynamic limit n needs static + n <= 227 KB.
      const bool raised = e.smem_attribute >= 0;
      const size_t used = e.static_smem_bytes + (raised ? e.smem_attribute : e.dynamic_smem_bytes);
      const size_t limit = raised ? DeviceLimits::kMaxDynamicSmemOptin : DeviceLimits::kDefaultDynamicSmem;
      if (used > limit) {
        fault(cudaErrorInvalidValue,
              "%zu bytes of static __shared__ arrays + %zu bytes of %s exceed %zu bytes (without "
              "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) static + dynamic "
              "shared memory must fit in 48 KB; static + n in 227 KB)",
              e.static_smem_bytes, used - e.static_smem_bytes,
              raised ? "raised dynamic limit" : "dynamic shared memory", limit);
      }
    }
  }
  return true;
}

void run_kernel(const KernelLaunch& k, const LaunchConfig& c) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  if (e.kernel) {
    std::fprintf(stderr, "txn_emu: kernel launched from kernel code (dynamic parallelism is not emulated)\n");
    std::abort();
  }
  char msg[512];
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0) {
    std::snprintf(msg, sizeof(msg), "%s (%s:%d): zero-sized grid (%u,%u,%u) or block (%u,%u,%u)", k.name, k.file,
                  k.line, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    record_error(cudaErrorInvalidConfiguration, msg);
    return;
  }
  if (threads > uint64_t(DeviceLimits::kMaxThreadsPerBlock) || c.block.x > 1024 || c.block.y > 1024 ||
      c.block.z > uint32_t(DeviceLimits::kMaxBlockDimZ) || c.grid.y > 65535 || c.grid.z > 65535 ||
      c.grid.x > 2147483647u) {
    std::snprintf(msg, sizeof(msg), "%s (%s:%d): grid (%u,%u,%u) x block (%u,%u,%u) exceeds the device limits", k.name,
                  k.file, k.line, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    record_error(cudaErrorInvalidConfiguration, msg);
    return;
  }
  const int smem_limit = func_max_dynamic_smem(k.func);
  if (c.smem > static_cast<size_t>(smem_limit)) {
    std::snprintf(msg, sizeof(msg),
                  "%s (%s:%d): %zu bytes of dynamic shared memory exceed this kernel's limit of %d (above 48 KB it "
                  "must be raised with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n), "
                  "at most 227 KB)",
                  k.name, k.file, k.line, c.smem, smem_limit);
    record_error(cudaErrorInvalidValue, msg);
    return;
  }
  if (e.require_current_stream && c.stream != current_stream()) {
    std::snprintf(msg, sizeof(msg),
                  "%s (%s:%d): launched on stream %p, not on torch's current stream (%p): kernels must run on "
                  "at::cuda::getCurrentCUDAStream()",
                  k.name, k.file, k.line, static_cast<void*>(c.stream), static_cast<void*>(current_stream()));
    record_error(cudaErrorInvalidResourceHandle, msg);
    return;
  }

  // run
  ++e.launches;
  const uint64_t launch_seed = e.seed * 0x9e3779b97f4a7c15ull + (++e.launch_index);
  e.kernel = &k;
  e.static_smem_bytes = 0;
  {
    const auto it = e.max_dynamic_smem.find(k.func);
    e.smem_attribute = it == e.max_dynamic_smem.end() ? -1 : it->second;
  }
  e.nthreads = static_cast<int>(threads);
  e.failed = false;
  e.fibers.assign(e.nthreads, Fiber{});
  for (int i = 0; i < e.nthreads; ++i) {
    Fiber& f = e.fibers[i];
    f.linear = i;
    f.tid = make_uint3(i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y));
  }
  ensure_stacks(e, e.nthreads);
  e.dynamic_smem_bytes = c.smem;
  if (c.smem) {
    e.dynamic_smem.assign(c.smem + 64 + 128 + 64, 0xa5);  // canaries on both sides, slack for 128-byte alignment
  }
  g_grid_dim = c.grid;
  g_block_dim = c.block;
  const uint64_t nblocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  std::vector<int> block_order;
  const Schedule block_schedule = e.schedule == Schedule::Vary ? Schedule::Shuffle : e.schedule;
  if (nblocks <= (uint64_t(1) << 26)) make_order(block_order, static_cast<int>(nblocks), block_schedule, launch_seed);
  {
    SignalGuard signals;
    for (uint64_t b = 0; b < nblocks; ++b) {
      const uint64_t lin = block_order.empty() ? b : static_cast<uint64_t>(block_order[b]);
      g_block_idx = make_uint3(static_cast<unsigned>(lin % c.grid.x), static_cast<unsigned>((lin / c.grid.x) % c.grid.y),
                               static_cast<unsigned>(lin / (uint64_t(c.grid.x) * c.grid.y)));
      ++e.blocks;
      run_block(e, launch_seed ^ (lin * 0xd6e8feb86659fd93ull));
      if (e.failed) break;
    }
  }
  e.kernel = nullptr;
  e.current = nullptr;
  if (e.failed) record_error(e.fail_code, e.fail_message);
}

// ------------------------------------------------------------------------------------------------ test control
void configure(const char* schedule, uint64_t seed) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const std::string s(schedule);
  e.schedule = s == "forward" ? Schedule::Forward
               : s == "reverse" ? Schedule::Reverse
               : s == "shuffle" ? Schedule::Shuffle
                                : Schedule::Vary;
  e.seed = seed;
  e.launch_index = 0;
}

const char* schedule() { return schedule_name(engine().schedule); }

double set_timeout(double seconds) {
  Engine& e = engine();
  std::lock_guard<std::recursive_mutex> lock(e.mutex);
  const double was = e.timeout_s;
  e.timeout_s = seconds;
  return was;
}

void stats(uint64_t* launches, uint64_t* blocks, uint64_t* switches) {
  Engine& e = engine();
  *launches = e.launches;
  *blocks = e.blocks;
  *switches = e.switches;
}

}  // namespace txn_emu
