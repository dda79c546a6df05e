"""OSRA benchmark: the attention core (fused backends) vs the official matmul+softmax path,
F.scaled_dot_product_attention with a float mask, and FlexAttention with a score_mod bias (GPU);
then the whole OSRA module, fused vs reference. Forward and forward+backward, time and peak memory.

    python benchmarks/bench_osra.py --quick
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

import transxnet_ops  # noqa: E402
from transxnet_ops import reference  # noqa: E402

# (label, heads, N queries, M keys, head dim): TransXNet-T stages at 224px, then detection-size maps.
CORE_SHAPES = [("T1 56x56", 1, 3136, 49, 24), ("T2 28x28", 2, 784, 49, 24), ("T3 14x14", 4, 196, 49, 28),
               ("T4 7x7", 8, 49, 49, 28), ("det T1 256x256", 1, 65536, 1024, 24), ("det T2 128x128", 2, 16384, 1024, 24)]
# (label, dim of the OSRA half, heads, side, sr_ratio)
MODULE_SHAPES = [("T1", 24, 1, 56, 8), ("T2", 48, 2, 28, 4), ("T3", 112, 4, 14, 2), ("T4", 224, 8, 7, 1)]


def core_impls(device):
    impls = {f"fused-{n}": (lambda n: lambda q, k, v, b: transxnet_ops.osra_attention(q, k, v, b, backend=n))(n)
             for n in transxnet_ops.available_backends(device)
             if n != "reference" and not (n == "triton" and device == "cpu")}
    impls["official matmul+softmax"] = reference.osra_attention
    impls["sdpa float mask"] = lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b)
    if device == "cuda":
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)

            def flex_bias(q, k, v, b):
                return flex(q, k, v, score_mod=lambda s, bi, h, qi, ki: s + b[0, h, qi, ki])

            impls["flex_attention score_mod"] = flex_bias
        except Exception as exc:  # older torch: report and go on without it
            print(f"FlexAttention unavailable: {exc}")
    return impls


def run(fn, mode):
    if mode == "fwd":
        return lambda *a: fn(*a[:-1])
    return lambda *a: torch.autograd.backward(fn(*a[:-1]), a[-1])


def measure(rows, base_key, label, dtype, mode, impls, rotating, device, quick, extra):
    base = None
    for name, fn in impls.items():
        f = run(fn, mode)
        try:
            with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                t = T.time_fn(f, rotating, device, quick)
                mem = T.peak_memory_mb(f, rotating.next(), device)
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. the dense path out of memory
            print(f"{name} {label}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        base = t["median_ms"] if name == base_key else base
        rows.append(dict(shape=label, dtype=str(dtype).replace("torch.", ""), mode=mode, impl=name, **t,
                         peak_mem_mb=mem, **extra))
    for r in rows:
        if r["shape"] == label and r["mode"] == mode and r["dtype"] == str(dtype).replace("torch.", "") and base:
            r["speedup_vs_official"] = base / r["median_ms"]


def main():
    args = T.parse_args(__doc__)
    device, rows = args.device, []
    batch = 2 if args.quick else 32
    core = CORE_SHAPES[:2] if args.quick else CORE_SHAPES
    impls = core_impls(device)
    for (label, H, N, M, D), dtype, mode in T.progress(
            [(s, dt, m) for s in core for dt in args.dtypes for m in ("fwd", "fwd+bwd")], "attention core"):
        B = 2 if N > 10000 else batch

        def make_inputs():
            g = mode != "fwd"
            mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=g)  # noqa: E731
            return mk(B, H, N, D), mk(B, H, M, D), mk(B, H, M, D), mk(1, H, N, M), torch.randn(B, H, N, D,
                                                                                               device=device, dtype=dtype)

        measure(rows, "official matmul+softmax", f"core {label} B={B}", dtype, mode, impls, T.Rotating(make_inputs, device),
                device, args.quick, dict(part="core"))

    module_shapes = MODULE_SHAPES[:2] if args.quick else MODULE_SHAPES
    for (label, dim, heads, side, sr), dtype, mode in T.progress(
            [(s, dt, m) for s in module_shapes for dt in args.dtypes for m in ("fwd", "fwd+bwd")], "OSRA module"):
        modules = {}
        for name in [n for n in transxnet_ops.available_backends(device) if not (n == "triton" and device == "cpu")]:
            torch.manual_seed(0)
            m = transxnet_ops.OSRA(dim, num_heads=heads, sr_ratio=sr, backend=name).to(device, dtype)
            modules["official (reference)" if name == "reference" else f"fused-{name}"] = m.train(mode != "fwd")
        N, M = side * side, math.ceil(side / sr) ** 2
        pos = torch.zeros(1, heads, N, M, device=device, dtype=dtype, requires_grad=True)
        impls_m = {n: (lambda m: lambda x, p: m(x, p))(m) for n, m in modules.items()}

        def make_inputs():
            x = torch.randn(batch, dim, side, side, device=device, dtype=dtype, requires_grad=mode != "fwd")
            return x, pos, torch.randn(batch, dim, side, side, device=device, dtype=dtype)

        measure(rows, "official (reference)", f"OSRA {label} B={batch}", dtype, mode, impls_m,
                T.Rotating(make_inputs, device), device, args.quick, dict(part="module"))

    T.write_results("bench_osra", rows, ["shape", "dtype", "mode", "impl", "median_ms", "peak_mem_mb",
                                         "speedup_vs_official"], device, args.out,
                    plot=lambda ax, rs: T.bar_plot(ax, [dict(r, label=f"{r['shape']} {r['dtype']} {r['mode']}")
                                                        for r in rs], "label", "impl", "speedup_vs_official",
                                                   "speedup vs official (higher is better)"))


if __name__ == "__main__":
    main()
