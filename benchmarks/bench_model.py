"""TransXNet end to end: the package's model against the official one.

The baseline is the official model restated without mmcv/timm (transxnet_ops.models.official: the official
grouped-conv IDConv, matmul+softmax attention, unfolded BatchNorms, split/cat multi-scale convs), with the same
weights as ours. Four implementations:
    official           official restatement, eager
    official+compile   torch.compile(official)
    ours               transxnet_t/s/b on backend "auto" (fused kernels), eager
    ours+compile       torch.compile(ours, fullgraph=True)
Two modes: inference (eval, no_grad) and a training step (train mode, forward, cross-entropy, backward, AdamW
step). fp32 and bf16/fp16 autocast. Reported: median time, images/s, GPU kernel time (when _timing provides it),
peak memory (GPU), speedups against official eager and official+compile. Plus a detection-size case
(fork_feat=True, 800x1216; GPU by default) for memory.

    python benchmarks/bench_model.py --quick                      # T; CPU: batch 4 and 8, eager only
    python benchmarks/bench_model.py --device cuda --dtypes bfloat16 --batch 128
"""
import gc
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
        outs = out if isinstance(out, list) else [out]
        # classification: cross-entropy; backbone: a stand-in head loss touching every output
        loss = F.cross_entropy(outs[0].float(), y) if len(outs) == 1 else sum(o.float().square().mean() for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def kernel_time(step, inputs, device):
    """GPU kernel time per call, from benchmarks/_timing when it offers it (infra branch), else None."""
    measure = getattr(T, "gpu_kernel_time_ms", None) or getattr(T, "kernel_time_ms", None)
    if device != "cuda" or measure is None:
        return None
    try:
        result = measure(step, inputs)
        return result.get("kernel_ms") if isinstance(result, dict) else result
    except Exception as exc:  # a measurement failure must not lose the timing row
        print(f"kernel time failed: {exc}")
        return None


def prepare(impl, arch, mode, precision, batch, size, args, fork_feat=False):
    """(step, rotating inputs) for one implementation."""
    device = args.device
    amp = None if precision == "fp32" else getattr(torch, precision.split()[0])
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build(impl, arch, fork_feat).to(device).to(memory_format=memory_format).train(mode == "train")
    fwd = model
    if impl.endswith("+compile"):
        kwargs = dict(mode=args.compile_mode) if args.compile_mode else {}
        fwd = torch.compile(model, fullgraph=impl.startswith("ours"), **kwargs)

    def make_inputs():
        x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=memory_format)
        return x, torch.randint(0, 1000, (batch,), device=device)

    return make_step(model, fwd, mode, device, amp), T.Rotating(make_inputs, device, min_bytes=64 << 20, max_copies=4)


def run_case(rows, impls, arch, mode, precision, batch, size, args, fork_feat=False):
    """Every implementation of one case; on CPU in `args.rounds` alternating rounds (a shared machine drifts)."""
    base = dict(model=f"TransXNet-{arch.upper()}" + (" backbone" if fork_feat else ""), input=f"{size[0]}x{size[1]}",
                precision=precision, mode=mode, batch=batch)
    prepared, case = {}, {}
    for impl in impls:
        try:
            prepared[impl] = prepare(impl, arch, mode, precision, batch, size, args, fork_feat)
        except Exception as exc:
            case[impl] = _failed(base, impl, exc)
    times = {impl: [] for impl in prepared}
    for _ in range(args.rounds):
        for impl, (step, rotating) in prepared.items():
            if impl in case:
                continue
            try:
                t = T.time_fn(step, rotating, args.device, args.quick)
                times[impl].append(t)
            except Exception as exc:  # e.g. out of memory, a compile failure: reported, the others still run
                case[impl] = _failed(base, impl, exc)
    for impl, (step, rotating) in prepared.items():
        if impl in case:
            continue
        median = statistics.median(t["median_ms"] for t in times[impl])
        case[impl] = dict(base, impl=impl, median_ms=median, p20_ms=min(t["p20_ms"] for t in times[impl]),
                          p80_ms=max(t["p80_ms"] for t in times[impl]), runs=sum(t["runs"] for t in times[impl]),
                          rounds=[t["median_ms"] for t in times[impl]], images_per_s=batch / (median * 1e-3),
                          kernel_ms=kernel_time(step, rotating.next(), args.device),
                          peak_mem_mb=T.peak_memory_mb(step, rotating.next(), args.device))
    del prepared
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    case = [case[impl] for impl in impls]
    ms = {r["impl"]: r.get("median_ms") for r in case}
    mem = {r["impl"]: r.get("peak_mem_mb") for r in case}
    for r in case:
        for ref in ("official", "official+compile"):
            if r.get("median_ms") and ms.get(ref):
                r["vs_" + ref.replace("+", "_")] = ms[ref] / r["median_ms"]
        if r.get("peak_mem_mb") and mem.get("official"):
            r["mem_vs_official"] = r["peak_mem_mb"] / mem["official"]
    rows.extend(case)


def _failed(base, impl, exc):
    traceback.print_exc()
    return dict(base, impl=impl, error=f"{type(exc).__name__}: {str(exc)[:200]}")


def main():
    args = T.parse_args(__doc__, add_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    args.rounds = args.rounds or (3 if device == "cpu" else 1)
    archs = (args.models or ("t" if args.quick else "t,s,b")).split(",")
    batches = [int(b) for b in (args.batch or ("4,8" if device == "cpu" else "128")).split(",")]
    default_impls = IMPLS[::2] if device == "cpu" and args.quick else IMPLS
    impls = args.impls.split(",") if args.impls else list(default_impls)
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise SystemExit(f"unknown --impls {sorted(unknown)}: choose from {IMPLS}")
    impls = sorted(impls, key=IMPLS.index)  # the official eager baseline first
    precisions = [("fp32" if d == torch.float32 else f"{str(d).replace('torch.', '')} autocast") for d in args.dtypes]
    modes = args.modes.split(",")
    size = (args.image_size, args.image_size)
    print(f"bench_model on {T.device_name(device)}: impls {impls}, batches {batches}, {precisions}"
          + ("" if device == "cuda" else " (no GPU: kernel time and peak memory are GPU-only)")
          + ("" if any(hasattr(T, n) for n in ("gpu_kernel_time_ms", "kernel_time_ms"))
             else "; GPU kernel time: not offered by benchmarks/_timing.py on this branch"))

    rows = []
    cases = [(a, m, p, b) for a in archs for p in precisions for m in modes for b in batches]
    for arch, mode, precision, batch in T.progress(cases, "model"):
        run_case(rows, impls, arch, mode, precision, batch, size, args)
    if args.detection == "yes" or args.detection == "auto" and device == "cuda":
        for precision in precisions:  # memory at detection size: eager, training step
            run_case(rows, [i for i in impls if "+compile" not in i], archs[0], "train", precision, 2, (800, 1216),
                     args, fork_feat=True)

    columns = ["model", "input", "precision", "mode", "impl", "batch", "median_ms", "images_per_s", "kernel_ms",
               "peak_mem_mb", "vs_official", "vs_official_compile", "mem_vs_official", "error"]
    T.write_results("bench_model", rows, columns, device, args.out, plot=plot)


def plot(ax, rows):
    labelled = [dict(r, label=f"{r['model']} {r['input']} {r['precision']} {r['mode']} b{r['batch']}")
                for r in rows if r.get("images_per_s")]
    T.bar_plot(ax, labelled, "label", "impl", "images_per_s", "images / s (higher is better)")


if __name__ == "__main__":
    main()
