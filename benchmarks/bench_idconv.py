"""Depthwise convolution benchmark: IDConv (per-sample weights) and static depthwise (DPE, STE, MS-FFN), the fused
backends against the official paths, at TransXNet shapes, with the physical floor of each shape.

    python benchmarks/bench_idconv.py --quick            # CPU (batch 8) or GPU (batch 128, TransXNet-T)
    python benchmarks/bench_idconv.py --device cuda      # TransXNet-T and -S, batch 128, fp32 and bf16
    python benchmarks/bench_idconv.py --smoke            # one tiny shape per op: checks the harness

IDConv baselines: the official path F.conv2d(x.reshape(1, B*C, H, W), groups=B*C) in NCHW (PyTorch's own depthwise
kernel in bf16/fp32), the same grouped conv on channels_last inputs (cuDNN) and torch.compile of the official path.
Static depthwise baselines: nn.Conv2d(groups=C) per channel split (what the official DPE / MultiScaleDWConv run) in
NCHW and in channels_last. On a GPU each row gives the eager latency (CUDA events), the GPU kernel time (profiler
device time of one call) and the launches per call; `x floor` is the kernel time over the floor of the shape: the
larger of bytes / copy bandwidth (4.26 TB/s on an H200) and FMAs / fp32 FMA rate (67 TFLOPS), as DESIGN.md computes.
"""
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the checkout's transxnet_ops, built in place or installed -e
import _timing as T  # noqa: E402

import transxnet_ops  # noqa: E402
from transxnet_ops import reference  # noqa: E402

K = 7
# per stage (dim, side at 224 px, mlp ratio): IDConv sees dim/2 channels, DPE dim, MS-FFN mlp*dim
MODELS = {"T": [(48, 56, 4), (96, 28, 4), (224, 14, 4), (448, 7, 4)],
          "S": [(64, 56, 6), (128, 28, 6), (320, 14, 4), (512, 7, 4)]}


def ms_splits(channels, kernel_sizes=(1, 3, 5, 7)):
    """MS-FFN's channel splits: equal parts, the first taking the remainder."""
    part = channels // len(kernel_sizes)
    return [channels - part * (len(kernel_sizes) - 1)] + [part] * (len(kernel_sizes) - 1), list(kernel_sizes)


def cases(args):
    """(op, label, shape) to run: op "idconv" (B, C, S) or "dwconv" (B, splits, kernel sizes, S)."""
    if args.smoke:
        return [("idconv", "T4", dict(B=2, C=224, S=7)), ("dwconv", "T4 MS-FFN", dict(B=2, S=7,
                                                                                      **_ms(448 * 4)))]
    models = ["T"] if args.quick else ["T", "S"]
    batch = (8 if args.device == "cpu" else 128)
    out = []
    for m in models:
        for i, (dim, side, mlp) in enumerate(MODELS[m]):
            out.append(("idconv", f"{m}{i + 1}", dict(B=batch, C=dim // 2, S=side)))
    for m in models:
        for i, (dim, side, mlp) in enumerate(MODELS[m]):
            if args.quick and i not in (0, 2):
                continue
            out.append(("dwconv", f"{m}{i + 1} DPE 7x7", dict(B=batch, S=side, splits=[dim], ks=[7])))
            out.append(("dwconv", f"{m}{i + 1} STE 3x3", dict(B=batch, S=side, splits=[dim], ks=[3])))
            out.append(("dwconv", f"{m}{i + 1} MS-FFN 1/3/5/7", dict(B=batch, S=side, **_ms(mlp * dim))))
    return out


def _ms(channels):
    splits, ks = ms_splits(channels)
    return dict(splits=splits, ks=ks)


# ----------------------------------------------------------------------------- IDConv
def idconv_impls(device, args):
    """name -> (prepare(x, w, b, gy) -> args, fn(*args[:-1]))."""
    ident = lambda *a: a  # noqa: E731
    impls = {f"fused-{n}": (ident, (lambda n: lambda x, w, b: transxnet_ops.idconv(x, w, b, backend=n))(n))
             for n in transxnet_ops.available_backends(device)
             if n != "reference" and not (n == "triton" and device == "cpu")}  # interpreter: not a speed path
    impls["official NCHW"] = (ident, reference.idconv)

    def to_grouped_cl(x, w, b, gy):  # the grouped conv's own input, already channels_last: only the conv is timed
        B, C, H, W = x.shape
        cl = lambda t: t.detach().reshape(1, B * C, H, W).contiguous(  # noqa: E731
            memory_format=torch.channels_last).requires_grad_(t.requires_grad)
        return cl(x), w.detach().reshape(B * C, 1, K, K).requires_grad_(w.requires_grad), \
            b.detach().reshape(-1).requires_grad_(b.requires_grad), cl(gy)

    impls["official channels_last"] = (to_grouped_cl, lambda x, w, b: F.conv2d(x, w, b, padding=K // 2,
                                                                               groups=x.shape[1]))
    if args.compile:
        torch._dynamo.config.cache_size_limit = 256
        # dynamic=False: inductor's grouped-conv lowering fails on symbolic B*C groups; one compile per shape
        impls["official+torch.compile"] = (ident, torch.compile(reference.idconv, dynamic=False))
    return impls


def idconv_work(shape, dtype, mode):
    """(bytes, FMAs) a kernel must move and do: read x, w, b and write y (+ read grad_y, x, w and write grad_x,
    grad_w, grad_b); K*K FMAs per output (x3 with grad_x and grad_w)."""
    B, C, S = shape["B"], shape["C"], shape["S"]
    e = torch.tensor([], dtype=dtype).element_size()
    x, w, b = B * C * S * S, B * C * K * K, B * C
    nbytes, fmas = (2 * x + w + b) * e, x * K * K
    if mode != "fwd":
        nbytes += (3 * x + 2 * w + b) * e
        fmas *= 3
    return nbytes, fmas


def idconv_inputs(shape, dtype, device, grad):
    B, C, S = shape["B"], shape["C"], shape["S"]
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=grad)  # noqa: E731
    return mk(B, C, S, S), mk(B, C, K, K), mk(B, C), torch.randn(B, C, S, S, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- static depthwise
def dwconv_impls(device, args):
    ident = lambda *a: a  # noqa: E731

    def fused(name):
        return lambda x, *wb: transxnet_ops.multiscale_dwconv2d(x, wb[:len(wb) // 2], wb[len(wb) // 2:],
                                                                backend=name)

    impls = {f"fused-{n}": (ident, fused(n)) for n in transxnet_ops.available_backends(device)
             if n != "reference" and not (n == "triton" and device == "cpu")}

    def convs(x, *wb):  # nn.Conv2d(groups=c) per split, then cat: the official MultiScaleDWConv / DPE
        ws, bs = wb[:len(wb) // 2], wb[len(wb) // 2:]
        parts = x.split([w.shape[0] for w in ws], dim=1)
        outs = [F.conv2d(p, w, b, padding=w.shape[-1] // 2, groups=w.shape[0]) for p, w, b in zip(parts, ws, bs)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    def to_cl(x, *rest):
        cl = lambda t: t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(  # noqa: E731
            t.requires_grad)
        *wb, gy = rest
        return (cl(x), *wb, cl(gy))

    impls["nn.Conv2d NCHW"] = (ident, convs)
    impls["nn.Conv2d channels_last"] = (to_cl, convs)
    if args.compile:
        impls["nn.Conv2d+torch.compile"] = (ident, torch.compile(convs, dynamic=False))
    return impls


def dwconv_work(shape, dtype, mode):
    B, S = shape["B"], shape["S"]
    e = torch.tensor([], dtype=dtype).element_size()
    C = sum(shape["splits"])
    x = B * C * S * S
    w = sum(c * k * k for c, k in zip(shape["splits"], shape["ks"]))
    fmas = sum(B * c * S * S * k * k for c, k in zip(shape["splits"], shape["ks"]))
    nbytes = (2 * x + w + C) * e
    if mode != "fwd":
        nbytes += (3 * x + 2 * w + C) * e
        fmas *= 3
    return nbytes, fmas


def dwconv_inputs(shape, dtype, device, grad):
    B, S = shape["B"], shape["S"]
    C = sum(shape["splits"])
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=grad)  # noqa: E731
    ws = [mk(c, 1, k, k) for c, k in zip(shape["splits"], shape["ks"])]
    bs = [mk(c) for c in shape["splits"]]
    return (mk(B, C, S, S), *ws, *bs, torch.randn(B, C, S, S, device=device, dtype=dtype))


OPS = {"idconv": (idconv_impls, idconv_inputs, idconv_work), "dwconv": (dwconv_impls, dwconv_inputs, dwconv_work)}


def describe(op, label, shape):
    if op == "idconv":
        return f"IDConv {label} B={shape['B']} C={shape['C']} {shape['S']}x{shape['S']}"
    ks = "/".join(map(str, shape["ks"]))
    return f"dw {label} B={shape['B']} C={sum(shape['splits'])} {shape['S']}x{shape['S']} k={ks}"


def main():
    args = T.parse_args(__doc__)
    device, rows = args.device, []
    impls = {op: make(device, args) for op, (make, _, _) in OPS.items()}
    todo = [(c, dt, mode) for c in cases(args) for dt in args.dtypes for mode in ("fwd", "fwd+bwd")]
    for (op, label, shape), dtype, mode in T.progress(todo, "depthwise"):
        _, make_inputs, work = OPS[op]
        nbytes, fmas = work(shape, dtype, mode)
        floor, bound = T.floor_ms(nbytes, fmas, device)
        base, case_rows = None, []
        for impl, (prepare, op_fn) in impls[op].items():
            fn = T.run_case(op_fn, mode)
            try:
                rotating = T.Rotating(lambda: prepare(*make_inputs(shape, dtype, device, mode != "fwd")), device)
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    t = T.measure(fn, rotating, device, args)
                    mem = T.peak_memory_mb(fn, rotating.next(), device)
                del rotating
            except Exception as exc:  # a failing or missing implementation is reported, not fatal
                print(f"{impl} {label} {mode}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            time_ms = t.get("kernel_ms") or t["median_ms"]
            case_rows.append(dict(shape=describe(op, label, shape), dtype=str(dtype).replace("torch.", ""),
                                  mode=mode, impl=impl, **t, peak_mem_mb=mem, floor_ms=floor, floor_bound=bound,
                                  x_floor=time_ms / floor if floor else None,
                                  gbps=nbytes / (time_ms * 1e-3) / 1e9))
            if impl.startswith(("official NCHW", "nn.Conv2d NCHW")):
                base = time_ms
        for r in case_rows:
            r["speedup_vs_official"] = base / (r.get("kernel_ms") or r["median_ms"]) if base else None
        rows += case_rows
    T.write_op_results("bench_idconv", rows, device, args.out,
                       "larger of bytes / copy bandwidth and FMAs / fp32 rate",
                       "speedup vs official path (higher is better)", no_plot=args.no_plot)


if __name__ == "__main__":
    main()
