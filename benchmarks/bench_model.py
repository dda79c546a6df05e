"""TransXNet-T/S/B: inference throughput (images/s) and training step time + peak memory,
fused (backend "auto") vs the official-style reference path vs torch.compile of the reference.

    python benchmarks/bench_model.py --quick       # TransXNet-T, small batch
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

from transxnet_ops import models  # noqa: E402


def add_args(p):
    p.add_argument("--models", default=None, help="comma list of t,s,b")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--image-size", type=int, default=224)


def main():
    args = T.parse_args(__doc__, add_args)
    device, rows = args.device, []
    archs = (args.models or ("t" if args.quick else "t,s,b")).split(",")
    batch = args.batch or (4 if device == "cpu" else (32 if args.quick else 64))
    amp_dtypes = [d for d in args.dtypes if d != torch.float32] if device == "cuda" else []
    precisions = ["fp32"] + [f"{str(d).replace('torch.', '')} autocast" for d in amp_dtypes]
    for arch, precision, mode in T.progress([(a, p, m) for a in archs for p in precisions
                                             for m in ("inference", "train step")], "model"):
        amp = None if precision == "fp32" else getattr(torch, precision.split()[0])
        variants = {}
        for name, backend, compiled in [("fused", "auto", False), ("official (reference)", "reference", False),
                                        ("reference+compile", "reference", True)]:
            torch.manual_seed(0)
            model = getattr(models, f"transxnet_{arch}")(backend=backend).to(device)
            model.train(mode != "inference")
            fwd = torch.compile(model) if compiled else model
            opt = torch.optim.SGD(model.parameters(), lr=1e-3) if mode != "inference" else None
            variants[name] = (model, fwd, opt)

        def make_inputs():
            return (torch.randn(batch, 3, args.image_size, args.image_size, device=device),)

        rotating = T.Rotating(make_inputs, device, min_bytes=64 << 20, max_copies=4)
        base = None
        for name, (model, fwd, opt) in variants.items():
            def step(x, fwd=fwd, opt=opt):
                with torch.autocast(device, dtype=amp, enabled=amp is not None):
                    if opt is None:
                        with torch.no_grad():
                            return fwd(x)
                    loss = fwd(x).float().logsumexp(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t = T.time_fn(step, rotating, device, args.quick)
            mem = T.peak_memory_mb(step, rotating.next(), device)
            base = t["median_ms"] if name.startswith("official") else base
            rows.append(dict(model=f"TransXNet-{arch.upper()}", precision=precision, mode=mode, impl=name,
                             batch=batch, **t, images_per_s=batch / (t["median_ms"] * 1e-3), peak_mem_mb=mem))
        for r in rows[-len(variants):]:
            r["speedup_vs_official"] = base / r["median_ms"]
    T.write_results("bench_model", rows, ["model", "precision", "mode", "impl", "batch", "median_ms", "images_per_s",
                                          "peak_mem_mb", "speedup_vs_official"], device, args.out,
                    plot=lambda ax, rs: T.bar_plot(ax, [dict(r, label=f"{r['model']} {r['precision']} {r['mode']}")
                                                        for r in rs], "label", "impl", "images_per_s",
                                                   "images / s (higher is better)"))


if __name__ == "__main__":
    main()
