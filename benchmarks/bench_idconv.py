"""IDConv (per-sample depthwise conv) benchmark: fused backends vs the official grouped-conv path,
torch.compile of it and a channels_last variant, at TransXNet stage shapes.

    python benchmarks/bench_idconv.py --quick            # CPU or GPU, a few shapes
    python benchmarks/bench_idconv.py --device cuda      # the full grid
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

import transxnet_ops  # noqa: E402
from transxnet_ops import reference  # noqa: E402

K = 7
# (model, channels per IDConv = dim / 2, feature size at 224px) for the four stages
STAGES = {"T": [(24, 56), (48, 28), (112, 14), (224, 7)],
          "S": [(32, 56), (64, 28), (160, 14), (256, 7)],
          "B": [(38, 56), (76, 28), (168, 14), (336, 7)]}


def shapes(quick, device):
    if quick:
        batches = [1, 8] if device == "cpu" else [1, 32]
        return [(f"T{i + 1}", b, c, s) for b in batches for i, (c, s) in enumerate(STAGES["T"])]
    out = [(f"{m}{i + 1}", b, c, s) for m, st in STAGES.items() for b in (1, 32, 128) for i, (c, s) in enumerate(st)]
    return out + [("T1@1024px", b, 24, 256) for b in (1, 8)]  # detection-size stage-1 map


def channels_last_official(x, w, b):
    B, C, H, W = x.shape
    y = torch.nn.functional.conv2d(x.reshape(1, B * C, H, W).contiguous(memory_format=torch.channels_last),
                                   w.reshape(B * C, 1, K, K), b.reshape(-1), padding=K // 2, groups=B * C)
    return y.reshape(B, C, H, W)


def implementations(device):
    impls = {f"fused-{name}": (lambda name: lambda x, w, b: transxnet_ops.idconv(x, w, b, backend=name))(name)
             for name in transxnet_ops.available_backends(device)
             if name != "reference" and not (name == "triton" and device == "cpu")}  # interpreter: not a speed path
    impls["official"] = reference.idconv
    # dynamic=False: inductor's grouped-conv lowering fails on symbolic B*C groups; one compile per shape
    torch._dynamo.config.cache_size_limit = 256
    impls["official+compile"] = torch.compile(reference.idconv, dynamic=False)
    impls["official-channels_last"] = channels_last_official
    return impls


def main():
    args = T.parse_args(__doc__)
    device, rows = args.device, []
    impls = implementations(device)
    peak = T.peak_bandwidth_gbps(device)
    cases = [(s, dt, mode) for s in shapes(args.quick, device) for dt in args.dtypes for mode in ("fwd", "fwd+bwd")]
    for (label, B, C, S), dtype, mode in T.progress(cases, "idconv"):
        def make_inputs():
            grad = mode != "fwd"
            x = torch.randn(B, C, S, S, device=device, dtype=dtype, requires_grad=grad)
            w = torch.randn(B, C, K, K, device=device, dtype=dtype, requires_grad=grad)
            b = torch.randn(B, C, device=device, dtype=dtype, requires_grad=grad)
            return x, w, b, torch.randn(B, C, S, S, device=device, dtype=dtype)

        rotating = T.Rotating(make_inputs, device)
        x, w, b, gy = rotating.sets[0]
        nbytes = T.tensor_bytes(x, w, b, x)  # read x, w, b; write y
        if mode != "fwd":
            nbytes += T.tensor_bytes(gy, x, w, x, w, b)  # read grad_y, x, w; write grad_x, grad_w, grad_b
        base = None
        for impl, op in impls.items():
            if mode == "fwd":
                fn = lambda x, w, b, gy, op=op: op(x, w, b)  # noqa: E731
            else:
                fn = lambda x, w, b, gy, op=op: torch.autograd.backward(op(x, w, b), gy)  # noqa: E731
            try:
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    t = T.time_fn(fn, rotating, device, args.quick)
                    mem = T.peak_memory_mb(fn, rotating.next(), device)
            except Exception as exc:  # a failing baseline is reported, not fatal
                print(f"{impl} {label} {mode}: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            gbps = nbytes / (t["median_ms"] * 1e-3) / 1e9
            base = t["median_ms"] if impl == "official" else base
            rows.append(dict(shape=f"{label} B={B} C={C} {S}x{S}", dtype=str(dtype).replace("torch.", ""), mode=mode,
                             impl=impl, **t, gbps=gbps, roofline_pct=100 * gbps / peak if peak else None,
                             peak_mem_mb=mem))
        for r in rows:
            if r.get("speedup_vs_official") is None and base:
                r["speedup_vs_official"] = base / r["median_ms"]
    T.write_results("bench_idconv", rows, ["shape", "dtype", "mode", "impl", "median_ms", "gbps", "roofline_pct",
                                           "peak_mem_mb", "speedup_vs_official"], device, args.out,
                    plot=lambda ax, rs: T.bar_plot(ax, [dict(r, label=f"{r['shape']} {r['dtype']} {r['mode']}")
                                                        for r in rs], "label", "impl", "speedup_vs_official",
                                                   "speedup vs official grouped conv (higher is better)"))


if __name__ == "__main__":
    main()
