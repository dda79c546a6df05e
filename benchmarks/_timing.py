"""Shared benchmark helpers: timing, rotating inputs, peak memory, physical floors, result writers (JSON, md, PNG).

Two GPU times per case, side by side (`measure`):
- eager latency: CUDA events around each call (what a user of the op waits, launch overhead included);
- GPU kernel time: the torch.profiler device time of the kernels (and memsets / copies) of one call, summed, with
  the number of device launches per call. Calls are told apart on the device timeline by a marker kernel
  (torch.cuda._sleep) launched between them, so backward kernels launched from autograd's thread count too.
Both are medians over many calls on rotating inputs (> 256 MB in all, larger than L2). On CPU there is only the
first (torch.utils.benchmark). Never used by the unit tests.
"""
import argparse
import datetime
import json
import os
import platform
import statistics

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Peak DRAM bandwidth (GB/s) of known GPUs, for the roofline column.
GPU_PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L40S": 864.0, "RTX 4090": 1008.0}
# The floors of DESIGN.md ("Performance regime"): an H200's measured device-to-device copy and the fp32 FMA peak
# (67 TFLOPS counts an FMA as two flops). On another GPU the copy is measured at start (`copy_bandwidth`).
H200_COPY_GBPS = 4260.0
GPU_FP32_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5, "L40S": 91.6, "RTX 4090": 82.6}


def parse_args(description, extra=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a small set of shapes, few repetitions")
    p.add_argument("--smoke", action="store_true",
                   help="one tiny shape per section, a few repetitions, no torch.compile baselines (harness checks)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baselines")
    p.add_argument("--dtypes", default=None, help="comma list: float32,bfloat16,float16")
    p.add_argument("--out", default=RESULTS_DIR, help="folder for JSON / markdown / PNG results")
    p.add_argument("--no-plot", action="store_true", help="write JSON and markdown only")
    if extra:
        extra(p)
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    default = "float32" if args.device == "cpu" else "float32,bfloat16"
    args.dtypes = [getattr(torch, d) for d in (args.dtypes or default).split(",")]
    args.quick = args.quick or args.smoke
    args.compile = not (args.no_compile or args.smoke)
    return args


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


class Rotating:
    """Cycles through copies of the inputs so that every call reads cold memory (working set > L2 on GPU)."""

    def __init__(self, make_inputs, device, min_bytes=256 << 20, max_copies=32):
        first = make_inputs()
        size = sum(t.numel() * t.element_size() for t in first if isinstance(t, torch.Tensor))
        copies = 1 if device == "cpu" else max(1, min(max_copies, min_bytes // max(size, 1)))
        self.sets = [first] + [make_inputs() for _ in range(copies - 1)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def time_fn(fn, rotating, device, quick, smoke=False):
    """Eager latency: median and 20/80% quantiles in milliseconds of fn(*inputs), inputs rotating between calls."""
    if device == "cuda":
        for _ in range(3):
            fn(*rotating.next())
        torch.cuda.synchronize()
        reps = 5 if smoke else 20 if quick else 100
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            args = rotating.next()
            s.record()
            fn(*args)
            e.record()
        torch.cuda.synchronize()
        times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    else:
        from torch.utils import benchmark

        fn(*rotating.next())  # warm-up (and compile, for torch.compile baselines)
        timer = benchmark.Timer("fn(*rot.next())", globals={"fn": fn, "rot": rotating},
                                num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=0.02 if smoke else 0.2 if quick else 1.0)
        times = sorted(t * 1e3 for t in measurement.times)  # per call (raw_times are per block)
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[3], "runs": len(times)}


_MARKER = "spin_kernel"  # the kernel of torch.cuda._sleep: a boundary between two calls on the device timeline


def kernel_time(fn, rotating, reps=20):
    """GPU kernel time of fn: per call, the summed device durations of its kernels, memsets and copies, and their
    count (launches). -> dict(kernel_ms, kernel_p20_ms, kernel_p80_ms, launches), medians over `reps` calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn(*rotating.next())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda._sleep(100)
        for _ in range(reps):
            fn(*rotating.next())
            torch.cuda._sleep(100)
        torch.cuda.synchronize()
    device_ops = [(e.name, e.time_range.start, e.time_range.elapsed_us()) for e in prof.events()
                  if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                  and getattr(e, "activity_type", "kernel") != "gpu_user_annotation"]
    return split_calls(device_ops, reps)


def split_calls(device_ops, reps):
    """Device ops (name, start_us, duration_us), in any order, with a marker kernel before, between and after the
    `reps` calls -> median kernel time and launches per call (the mean if the markers are not all found)."""
    device_ops = sorted(device_ops, key=lambda e: e[1])
    calls, current = [], None
    for name, _, duration in device_ops:
        if _MARKER in name:
            if current is not None:
                calls.append(current)
            current = []
        elif current is not None:
            current.append(duration)
    if len(calls) != reps:  # markers lost: fall back to the mean over all calls
        work = [d for name, _, d in device_ops if _MARKER not in name]
        return {"kernel_ms": sum(work) / reps / 1e3, "kernel_p20_ms": None, "kernel_p80_ms": None,
                "launches": len(work) / reps, "kernel_note": f"{len(calls)} of {reps} calls delimited: mean"}
    per_call = sorted(sum(c) / 1e3 for c in calls)
    q = statistics.quantiles(per_call, n=5) if len(per_call) >= 5 else [per_call[0]] * 4
    return {"kernel_ms": statistics.median(per_call), "kernel_p20_ms": q[0], "kernel_p80_ms": q[3],
            "launches": statistics.median(len(c) for c in calls)}


def run_case(fn, mode):
    """The timed call of one rotating input tuple (inputs..., grad_out): fwd: fn(*inputs); fwd+bwd: also the
    gradients of every input that requires one (autograd.grad, so no accumulation kernels into .grad are timed)."""
    if mode == "fwd":
        return lambda *a: fn(*a[:-1])

    def fwd_bwd(*a):
        inputs = [t for t in a[:-1] if isinstance(t, torch.Tensor) and t.requires_grad]
        return torch.autograd.grad(fn(*a[:-1]), inputs, a[-1])
    return fwd_bwd


def measure(fn, rotating, device, args):
    """Eager latency (+ on GPU: kernel time and launches per call) of fn over rotating inputs."""
    t = time_fn(fn, rotating, device, args.quick, getattr(args, "smoke", False))
    if device == "cuda":
        t.update(kernel_time(fn, rotating, reps=5 if getattr(args, "smoke", False) else 20 if args.quick else 50))
    return t


_copy_gbps = {}


def copy_bandwidth_gbps(device):
    """Device-to-device copy bandwidth (bytes read + written), measured once per process: the memory floor's rate."""
    if device not in _copy_gbps:
        n = (1 << 30) if device == "cuda" else (64 << 20)
        src = torch.empty(n, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        t = time_fn(lambda a, b: b.copy_(a), Rotating(lambda: (src, dst), device), device, quick=True)
        _copy_gbps[device] = 2 * n / (t["median_ms"] * 1e-3) / 1e9
        del src, dst
    return _copy_gbps[device]


def fp32_tflops(device):
    """fp32 peak (TFLOPS, FMA = 2 flops) of a known GPU, else None (no FMA floor)."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for key, v in GPU_FP32_TFLOPS.items() if key in name), None)


def floor_ms(nbytes, fmas, device):
    """The physical floor of a shape: the larger of bytes / copy bandwidth and FMAs / fp32 FMA rate, in ms.
    On an H200 the copy rate is DESIGN.md's 4.26 TB/s; elsewhere the copy measured here."""
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    gbps = H200_COPY_GBPS if "H200" in name else copy_bandwidth_gbps(device)
    t_bytes = nbytes / (gbps * 1e9) * 1e3
    tflops = fp32_tflops(device)
    t_fma = 2 * fmas / (tflops * 1e12) * 1e3 if tflops and fmas else 0.0
    return max(t_bytes, t_fma), ("FMA" if t_fma > t_bytes else "memory")


def peak_memory_mb(fn, inputs, device):
    """Peak memory allocated during one call beyond what was allocated before it (GPU only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


_cpu_peak = None


def peak_bandwidth_gbps(device):
    """Roofline bandwidth: the datasheet value on known GPUs, a measured large copy on CPU."""
    global _cpu_peak
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((bw for key, bw in GPU_PEAK_GBPS.items() if key in name), None)
    if _cpu_peak is None:
        src = torch.empty(64 << 20, dtype=torch.uint8).random_()
        dst = torch.empty_like(src)
        t = time_fn(lambda a, b: b.copy_(a), Rotating(lambda: (src, dst), "cpu"), "cpu", quick=True)
        _cpu_peak = 2 * src.numel() / (t["median_ms"] * 1e-3) / 1e9
    return _cpu_peak


def tensor_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def progress(items, desc):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, leave=False)
    except ImportError:
        return items


def environment(device):
    env = {"device": device_name(device), "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def write_results(name, rows, columns, device, out_dir, plot=None, notes=()):
    """rows: list of dicts. Writes NAME_DEVICE.json, .md (table of `columns`) and .png (via plot(ax, rows))."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{name}_{device}")
    env = environment(device)
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=1)
    lines = [f"# {name} on {env['device']}", "",
             f"torch {env['torch']}, triton {env['triton']}, {env['date']}. Median time (20-80% band in JSON).",
             *notes, "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(11, 5))
            plot(ax, rows)
            ax.set_title(f"{name} on {env['device']}")
            fig.tight_layout()
            fig.savefig(stem + ".png", dpi=110)
            plt.close(fig)
        except ImportError:
            print("matplotlib not installed: no plot")
    print(f"results: {stem}.json / .md" + (" / .png" if plot else ""))


def write_op_results(name, rows, device, out_dir, floor_note, ylabel, no_plot=False):
    """The per-op benchmarks' table (bench_idconv, bench_osra): eager latency, on a GPU also kernel time and launches,
    the floor of each shape (`floor_note` says what it is) and the speedup over the official path."""
    gpu = device == "cuda"
    columns = ["shape", "dtype", "mode", "impl", "median_ms"] + (["kernel_ms", "launches"] if gpu else []) + [
        "floor_ms", "x_floor", "speedup_vs_official", "peak_mem_mb"]
    gpu_note = "; `kernel_ms`: GPU kernel time of one call (profiler), `launches`: device launches per call"
    notes = [f"`median_ms`: eager latency{gpu_note if gpu else ''}; `floor_ms`: {floor_note}; `x_floor` and "
             f"`speedup_vs_official` use the {'kernel' if gpu else 'eager'} time."]
    write_results(name, rows, columns, device, out_dir, notes=notes,
                  plot=None if no_plot else lambda ax, rs: bar_plot(
                      ax, [dict(r, label=f"{r['shape']} {r['dtype']} {r['mode']}") for r in rs], "label", "impl",
                      "speedup_vs_official", ylabel))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def bar_plot(ax, rows, label_key, impl_key, value_key, ylabel):
    """Grouped bars: one group per label, one bar per implementation."""
    labels = list(dict.fromkeys(r[label_key] for r in rows))
    impls = list(dict.fromkeys(r[impl_key] for r in rows))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        vals = {r[label_key]: r[value_key] for r in rows if r[impl_key] == impl}
        ax.bar([x + i * width for x in range(len(labels))], [vals.get(l, 0) or 0 for l in labels], width, label=impl)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
