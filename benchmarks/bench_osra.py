"""OSRA attention benchmark: the attention core (fused backends) against plain matmul+softmax (the official path),
F.scaled_dot_product_attention with a float mask and FlexAttention with a score_mod bias (GPU), then the whole
OSRA module, fused vs reference. Forward and forward+backward (bias gradient included), time and peak memory.

    python benchmarks/bench_osra.py --quick        # GPU: T1, T4 and N=16384/M=1024 at batch 128; CPU: batch 2
    python benchmarks/bench_osra.py --device cuda  # the four TransXNet-T stages and both detection sizes
    python benchmarks/bench_osra.py --smoke        # one tiny shape: checks the harness

On a GPU each row gives the eager latency (CUDA events), the GPU kernel time (profiler device time of one call),
the launches per call, the peak memory, and the memory floor of the shape: the bytes a fused kernel must move (q,
k, v, bias read and out, lse written; backward also reads grad_out, out, lse and writes every gradient) over the copy
bandwidth (4.26 TB/s on an H200); `x floor` is the kernel time over it.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the checkout's transxnet_ops, built in place or installed -e
import _timing as T  # noqa: E402

import transxnet_ops  # noqa: E402
from transxnet_ops import reference  # noqa: E402

# (label, heads, N queries, M keys, head dim, batch on GPU): TransXNet-T stages at 224 px, then detection-size maps.
CORE_SHAPES = [("T1", 1, 3136, 49, 24, 128), ("T2", 2, 784, 49, 24, 128), ("T3", 4, 196, 49, 28, 128),
               ("T4", 8, 49, 49, 28, 128), ("det N=65536 M=1024", 1, 65536, 1024, 24, 8),
               ("det N=16384 M=1024", 2, 16384, 1024, 24, 8)]
QUICK = ("T1", "T4", "det N=16384 M=1024")
# (label, dim of the OSRA half, heads, side, sr_ratio)
MODULE_SHAPES = [("T1", 24, 1, 56, 8), ("T2", 48, 2, 28, 4), ("T3", 112, 4, 14, 2), ("T4", 224, 8, 7, 1)]


def core_shapes(args):
    if args.smoke:
        return [("tiny", 2, 37, 11, 24, 2)]
    shapes = [s for s in CORE_SHAPES if not args.quick or s[0] in QUICK]
    if args.device == "cpu":  # batch 2 on CPU, detection sizes with one image
        shapes = [(lab, h, n, m, d, 1 if n > 10000 else 2) for lab, h, n, m, d, _ in shapes]
        if args.quick:
            shapes = shapes[:2]
    return shapes


def core_impls(device, flex):
    impls = {f"fused-{n}": (lambda n: lambda q, k, v, b: transxnet_ops.osra_attention(q, k, v, b, backend=n))(n)
             for n in transxnet_ops.available_backends(device)
             if n != "reference" and not (n == "triton" and device == "cpu")}
    impls["matmul+softmax (official)"] = reference.osra_attention
    impls["sdpa float mask"] = lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b)
    if device == "cuda" and flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            compiled = torch.compile(flex_attention, dynamic=False)

            def flex_bias(q, k, v, b):  # the bias is captured by score_mod, its gradient flows back to it
                return compiled(q, k, v, score_mod=lambda s, bi, h, qi, ki: s + b[0, h, qi, ki])

            impls["flex_attention score_mod"] = flex_bias
        except Exception as exc:  # older torch: report and go on without it
            print(f"FlexAttention unavailable: {exc}")
    return impls


def memory_floor_bytes(B, H, N, M, D, dtype, mode):
    """Bytes a fused attention must move: q, k, v, bias in, out and lse (fp32) out; backward: q, k, v, bias, out,
    grad_out, lse in and grad_q, grad_k, grad_v, grad_bias out."""
    e = torch.tensor([], dtype=dtype).element_size()
    q, kv, bias, lse = B * H * N * D * e, 2 * B * H * M * D * e, H * N * M * e, B * H * N * 4
    fwd = q + kv + bias + q + lse
    if mode == "fwd":
        return fwd
    return fwd + (q + kv + bias + 2 * q + lse) + (q + kv + bias)


def measure(rows, base_key, label, dtype, mode, impls, make_inputs, device, args, extra):
    case_rows, base = [], None
    for name, fn in impls.items():
        f = T.run_case(fn, mode)
        try:
            rotating = T.Rotating(make_inputs, device)
            with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                t = T.measure(f, rotating, device, args)
                mem = T.peak_memory_mb(f, rotating.next(), device)
            del rotating
        except Exception as exc:  # e.g. the dense path out of memory, a backend without this case
            print(f"{name} {label} {mode}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        time_ms = t.get("kernel_ms") or t["median_ms"]
        base = time_ms if name == base_key else base
        row = dict(shape=label, dtype=str(dtype).replace("torch.", ""), mode=mode, impl=name, **t, peak_mem_mb=mem,
                   **extra)
        if extra.get("floor_ms"):
            row["x_floor"] = time_ms / extra["floor_ms"]
        case_rows.append(row)
    for r in case_rows:
        r["speedup_vs_official"] = base / (r.get("kernel_ms") or r["median_ms"]) if base else None
    rows += case_rows


def main():
    args = T.parse_args(__doc__)
    device, rows = args.device, []
    shapes = core_shapes(args)
    todo = [(s, dt, m) for s in shapes for dt in args.dtypes for m in ("fwd", "fwd+bwd")]
    impls_all = core_impls(device, flex=args.compile)
    impls_no_flex = {k: v for k, v in impls_all.items() if not k.startswith("flex")}
    for (label, H, N, M, D, B), dtype, mode in T.progress(todo, "attention core"):
        # FlexAttention compiles per shape: in quick mode only at the first shape
        impls = impls_all if not args.quick or label == shapes[0][0] else impls_no_flex

        def make_inputs():
            g = mode != "fwd"
            mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=g)  # noqa: E731
            return mk(B, H, N, D), mk(B, H, M, D), mk(B, H, M, D), mk(1, H, N, M), torch.randn(
                B, H, N, D, device=device, dtype=dtype)

        floor, _ = T.floor_ms(memory_floor_bytes(B, H, N, M, D, dtype, mode), 0, device)
        measure(rows, "matmul+softmax (official)", f"core {label} B={B} h={H} N={N} M={M} d={D}", dtype, mode,
                impls, make_inputs, device, args, dict(part="core", floor_ms=floor))

    module_shapes = [] if args.smoke else MODULE_SHAPES[:2] if args.quick else MODULE_SHAPES
    batch = 2 if device == "cpu" else 32 if args.quick else 128
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

        measure(rows, "official (reference)", f"OSRA {label} B={batch}", dtype, mode, impls_m, make_inputs, device,
                args, dict(part="module"))

    T.write_op_results("bench_osra", rows, device, args.out, "memory floor (bytes / copy bandwidth)",
                       "speedup vs official (higher is better)", no_plot=args.no_plot)


if __name__ == "__main__":
    main()
