"""TransXNet end to end: the package's model against the official one.

The baseline is the official model restated without mmcv/timm (transxnet_ops.models.official: the official
grouped-conv IDConv, matmul+softmax attention, unfolded BatchNorms, split/cat multi-scale convs), with the same
weights as ours. Four implementations:
    official           official restatement, eager
    official+compile   torch.compile(official)
    ours               transxnet_t/s/b on backend "auto" (fused kernels), eager
    ours+compile       torch.compile(ours, fullgraph=True)
Two modes: inference (eval, no_grad) and a training step (train mode: forward, cross-entropy, backward, AdamW
step). fp32 and bf16/fp16 autocast. Reported: median time, images/s, GPU kernel time and launches per call (when
benchmarks/_timing.py offers kernel_time), peak memory (GPU), speedups against official eager and official +
compile, memory against official eager. Plus a detection-size case (fork_feat=True, 800x1216, batch 2, training
step; on GPU by default) for memory.

The eager implementations of every case are measured first, the compiled ones after (their compilation takes
minutes); results are rewritten after every case, so a run cut short keeps what it measured. On CPU each case runs
in alternating rounds (official, ours, official, ours, ...) and reports the median, as a shared machine drifts.

    python benchmarks/bench_model.py --quick                      # T; CPU: batch 4 and 8, eager only
    python benchmarks/bench_model.py --device cuda --dtypes bfloat16 --batch 128

On a CPU shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads that lose their core
make a 2-thread forward 10-50x slower and the timings meaningless.
"""
import contextlib
import gc
import inspect
import io
import os
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

from transxnet_ops import models  # noqa: E402

IMPLS = ("official", "official+compile", "ours", "ours+compile")
COLUMNS = ["model", "input", "precision", "mode", "impl", "batch", "median_ms", "images_per_s", "kernel_ms",
           "launches", "peak_mem_mb", "vs_official", "vs_official_compile", "mem_vs_official", "error"]


def add_args(p):
    p.add_argument("--models", default=None, help="comma list of t,s,b (default: t with --quick, else t,s,b)")
    p.add_argument("--batch", default=None, help="comma list of batch sizes (default: CPU 4,8; GPU 128)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--impls", default=None,
                   help=f"comma list of {','.join(IMPLS)} (default: all; on CPU with --quick the eager ones: "
                        "inductor's C++ codegen of a whole model takes many minutes on a few cores)")
    p.add_argument("--modes", default="inference,train", help="comma list of inference,train")
    p.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)')
    p.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating timing rounds per case (default: CPU 3, GPU 1); the median is reported")
    p.add_argument("--detection", choices=["auto", "yes", "no"], default="auto",
                   help="fork_feat backbone at 800x1216, batch 2, training step (auto: on GPU only)")


# ------------------------------------------------------------------------------------------------ one measurement
def build(impl, arch, fork_feat=False):
    """Official restatement or ours, with the same (seeded, official-init) weights."""
    torch.manual_seed(0)
    official = getattr(models, f"official_transxnet_{arch}")(fork_feat=fork_feat)
    if impl.startswith("official"):
        return official
    ours = getattr(models, f"transxnet_{arch}")(fork_feat=fork_feat, backend="auto")
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours


def make_step(model, fwd, mode, device, amp):
    """One inference call, or one training step (forward, loss, backward, optimizer step)."""
    autocast = dict(device_type=device, dtype=amp, enabled=amp is not None)
    if mode == "inference":
        def step(x, y):
            with torch.no_grad(), torch.autocast(**autocast):
                return fwd(x)
        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, y):
        with torch.autocast(**autocast):
            out = fwd(x)
        # classification: cross-entropy; backbone: a stand-in head loss that reads every output
        loss = (F.cross_entropy(out.float(), y) if not isinstance(out, list)
                else sum(o.float().square().mean() for o in out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def prepare(impl, case, args):
    """(step, rotating inputs) of one implementation for one case."""
    device = args.device
    amp = None if case["precision"] == "fp32" else getattr(torch, case["precision"].split()[0])
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build(impl, case["arch"], case["fork_feat"]).to(device).to(memory_format=memory_format)
    model.train(case["mode"] == "train")
    fwd = model
    if impl.endswith("+compile"):
        kwargs = dict(mode=args.compile_mode) if args.compile_mode else {}
        fwd = torch.compile(model, fullgraph=impl.startswith("ours"), **kwargs)
    batch, size = case["batch"], case["size"]

    def make_inputs():
        x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=memory_format)
        return x, torch.randint(0, 1000, (batch,), device=device)

    return make_step(model, fwd, case["mode"], device, amp), T.Rotating(make_inputs, device, 64 << 20, 4)


def describe(case):
    return dict(model=f"TransXNet-{case['arch'].upper()}" + (" backbone" if case["fork_feat"] else ""),
                input="x".join(map(str, case["size"])), precision=case["precision"], mode=case["mode"],
                batch=case["batch"])


def run_phase(case, impls, args):
    """Rows of `impls` for one case, timed in alternating rounds."""
    rows, prepared, times = {}, {}, {}
    for impl in impls:
        try:
            prepared[impl] = prepare(impl, case, args)
            times[impl] = []
        except Exception as exc:
            rows[impl] = _failed(case, impl, exc)
    for _ in range(args.rounds):
        for impl, (step, rotating) in prepared.items():
            if impl not in rows:
                try:
                    times[impl].append(T.time_fn(step, rotating, args.device, args.quick))
                except Exception as exc:  # e.g. out of memory, a compile failure: reported, the others still run
                    rows[impl] = _failed(case, impl, exc)
    for impl, (step, rotating) in prepared.items():
        if impl in rows:
            continue
        median = statistics.median(t["median_ms"] for t in times[impl])
        row = dict(describe(case), impl=impl, median_ms=median, p20_ms=min(t["p20_ms"] for t in times[impl]),
                   p80_ms=max(t["p80_ms"] for t in times[impl]), runs=sum(t["runs"] for t in times[impl]),
                   round_medians_ms=[t["median_ms"] for t in times[impl]],
                   images_per_s=case["batch"] / (median * 1e-3))
        try:
            row.update(kernel_time(step, rotating, args))
            row["peak_mem_mb"] = T.peak_memory_mb(step, rotating.next(), args.device)
        except Exception as exc:
            row["error"] = f"kernel time / memory: {type(exc).__name__}: {str(exc)[:200]}"
        rows[impl] = row
    del prepared
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return [rows[impl] for impl in impls]


def kernel_time(step, rotating, args):
    """GPU kernel time and launches per call, from benchmarks/_timing.kernel_time when it is there."""
    if args.device != "cuda" or not hasattr(T, "kernel_time"):
        return {}
    return T.kernel_time(step, rotating, reps=5 if getattr(args, "smoke", False) else 20 if args.quick else 50)


def _failed(case, impl, exc):
    traceback.print_exc()
    return dict(describe(case), impl=impl, error=f"{type(exc).__name__}: {str(exc)[:200]}")


def add_ratios(rows):
    """Speedups against official eager and official+compile, memory against official eager, per case."""
    key = lambda r: tuple(r[k] for k in ("model", "input", "precision", "mode", "batch"))  # noqa: E731
    by_case = {}
    for r in rows:
        by_case.setdefault(key(r), {})[r["impl"]] = r
    for case in by_case.values():
        for r in case.values():
            for ref in ("official", "official+compile"):
                if r.get("median_ms") and case.get(ref, {}).get("median_ms"):
                    r["vs_" + ref.replace("+", "_")] = case[ref]["median_ms"] / r["median_ms"]
            if r.get("peak_mem_mb") and case.get("official", {}).get("peak_mem_mb"):
                r["mem_vs_official"] = r["peak_mem_mb"] / case["official"]["peak_mem_mb"]


# ------------------------------------------------------------------------------------------------ main
def main():
    args = T.parse_args(__doc__, add_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, smoke = args.device, getattr(args, "smoke", False)
    args.rounds = args.rounds or (1 if device == "cuda" or smoke else 3)
    archs = (args.models or ("t" if args.quick else "t,s,b")).split(",")
    batches = [int(b) for b in (args.batch or ("2" if smoke else "4,8" if device == "cpu" else "128")).split(",")]
    size = (64, 64) if smoke else (args.image_size, args.image_size)
    impls = args.impls.split(",") if args.impls else [
        i for i in IMPLS if "+compile" not in i or (getattr(args, "compile", True) and not (device == "cpu" and
                                                                                            args.quick))]
    if set(impls) - set(IMPLS):
        raise SystemExit(f"unknown --impls {sorted(set(impls) - set(IMPLS))}: choose from {IMPLS}")
    precisions = [("fp32" if d == torch.float32 else f"{str(d).replace('torch.', '')} autocast") for d in args.dtypes]

    cases = [dict(arch=a, precision=p, mode=m, batch=b, size=size, fork_feat=False)
             for a in archs for p in precisions for m in args.modes.split(",") for b in batches]
    detection = args.detection == "yes" or args.detection == "auto" and device == "cuda" and not smoke
    cases += [dict(arch=archs[0], precision=p, mode="train", batch=2, size=(800, 1216), fork_feat=True)
              for p in precisions] if detection else []
    eager = [i for i in IMPLS if i in impls and "+compile" not in i]
    compiled = [i for i in IMPLS if i in impls and "+compile" in i]
    phases = [(c, eager) for c in cases] + [(c, compiled) for c in cases if not c["fork_feat"]]
    phases = [(c, group) for c, group in phases if group]

    notes = [f"Baseline: the official model restated (transxnet_ops.models.official), same weights. "
             f"{'CPU: no GPU kernel time or peak memory; ' if device == 'cpu' else ''}"
             f"{'' if hasattr(T, 'kernel_time') else 'GPU kernel time: benchmarks/_timing.py has no kernel_time here. '}"
             f"{args.rounds} alternating round(s) per case, median."]
    print(f"bench_model on {T.device_name(device)}: {impls}, batches {batches}, {precisions}. " + notes[0])
    rows = []
    for case, group in T.progress(phases, "model"):
        rows.extend(run_phase(case, group, args))
        add_ratios(rows)
        with contextlib.redirect_stdout(io.StringIO()):  # keep what was measured if the run is cut short
            write(rows, args, notes)
    write(rows, args, notes)


def write(rows, args, notes):
    order = {impl: i for i, impl in enumerate(IMPLS)}
    rows = sorted(rows, key=lambda r: (r["model"], r["input"], r["precision"], r["mode"], r["batch"],
                                       order[r["impl"]]))
    plot = None if getattr(args, "no_plot", False) else _plot
    extra = dict(notes=notes) if "notes" in inspect.signature(T.write_results).parameters else {}
    T.write_results("bench_model", rows, COLUMNS, args.device, args.out, plot=plot, **extra)


def _plot(ax, rows):
    labelled = [dict(r, label=f"{r['model']} {r['input']} {r['precision']} {r['mode']} b{r['batch']}")
                for r in rows if r.get("images_per_s")]
    T.bar_plot(ax, labelled, "label", "impl", "images_per_s", "images / s (higher is better)")


if __name__ == "__main__":
    main()
