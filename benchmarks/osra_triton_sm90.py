"""Registers, spills and shared memory of every OSRA attention Triton launch at the TransXNet and detection shapes,
compiled for sm_90 without a GPU (static evidence; unmeasured on GPU).

    python benchmarks/osra_triton_sm90.py [--quick] [--out benchmarks/results/osra_triton_sm90.md]

The launchers (transxnet_ops/triton/osra.py) run forward and backward on meta tensors under `_register.recording()`;
each distinct launch (kernel, constexprs, argument types and 16-divisibility as Triton specialises them, warps,
stages) is compiled with triton.compile for GPUTarget("cuda", 90, 32) and its cubin read by cuobjdump. Shapes:
TransXNet-T/S/B stages at batch 128, bias (1, h, N, M) with its gradient, q/k/v/grad_out row-major and in the
model's column-major (transposed) layout, bf16/fp16/fp32; detection sizes N = 65536 and 16384 with M = 1024 and
d = 32, 64, 128. Exit status 1 if any launch fails to compile or spills.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret (fixed when triton is imported)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from transxnet_ops.triton import osra  # noqa: E402
from transxnet_ops.triton._register import recording  # noqa: E402

TT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
# (name, B, heads, N, M, d): TransXNet-T/S/B stages (d = channels / 2 / heads), then detection sizes
STAGES = [("T1", 128, 1, 3136, 49, 24), ("T2", 128, 2, 784, 49, 24), ("T3", 128, 4, 196, 49, 28),
          ("T4", 128, 8, 49, 49, 28), ("S1", 128, 1, 3136, 49, 32), ("S3", 128, 5, 196, 49, 32),
          ("B1", 128, 2, 3136, 49, 19), ("B3", 128, 8, 196, 49, 21)]
DETECTION = [(f"det{N // 1024}k-d{d}", 2, 2, N, 1024, d) for N in (65536, 16384) for d in (32, 64, 128)]


def record(B, H, N, M, D, dtype, cols):
    """Every launch of forward + backward (bias (1, H, N, M) with its gradient) on meta tensors."""
    mk = lambda *s: torch.empty(*s, device="meta", dtype=dtype)  # noqa: E731
    mkc = (lambda b, h, r, c: mk(b, h, c, r).transpose(-1, -2)) if cols else mk  # tokens contiguous
    q, k, v = mkc(B, H, N, D), mkc(B, H, M, D), mkc(B, H, M, D)
    bias = mk(1, H, N, M)
    with recording() as launches:
        out, lse = mk(B, H, N, D), torch.empty(B, H, N, device="meta")
        osra.launch_forward(q, k, v, bias, D ** -0.5, out, lse)
        plan = osra.backward_plan(q, k, bias, True)
        ws = osra.backward_workspace(plan, q, k, bias, True)
        osra.launch_backward(plan, mkc(B, H, N, D), q, k, v, bias, out, lse, D ** -0.5, mk(B, H, N, D),
                             mk(B, H, M, D), mk(B, H, M, D), mk(1, H, N, M), ws)
    return launches


def compile_source(kernel, args, kwargs, float_type="fp32"):
    """(ASTSource, options) of a recorded launch, typed as Triton's JIT specialises its arguments."""
    kwargs = dict(kwargs)
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in kwargs:
            sig[name], constexprs[(i,)] = "constexpr", kwargs[name]
            continue
        a = args[i]
        if isinstance(a, torch.Tensor):
            sig[name], attrs[(i,)] = "*" + TT[a.dtype], [["tt.divisibility", 16]]  # allocations are 16-aligned
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int) and a == 1:
            sig[name], constexprs[(i,)] = "constexpr", 1
        elif isinstance(a, int):
            sig[name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "i64"
            if a % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, float):
            sig[name] = float_type
        else:
            raise TypeError(f"{kernel.fn.__name__}.{name}: {type(a)}")
    return ASTSource(kernel, sig, constexprs, attrs), options, (repr(sig), repr(sorted(constexprs.items())),
                                                                 repr(sorted(attrs.items())))


def _cuobjdump():
    from triton.backends.nvidia import compiler as nv
    path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def resources(compiled):
    """Registers, spill (local) bytes, shared memory bytes and tensor-core instruction kinds of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack, local = map(int, re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out).groups())
    mma = sorted({m.split(".")[0] + "." + ".".join(m.split(".")[-3:]) for m in re.findall(
        r"\b(wgmma\.mma_async\.[\w.]+|mma\.sync\.aligned\.[\w.]+)", compiled.asm["ptx"])})
    return dict(regs=regs, spill=max(stack, local), shared=compiled.metadata.shared, mma=mma)


def occupancy(regs, shared, num_warps):
    """Blocks per SM on sm_90: 64K registers (allocated per warp in 256s), 228 KB shared memory (1 KB reserved per
    block), 64 warps, 32 blocks."""
    by_regs = 65536 // (((regs * 32 + 255) // 256) * 256 * num_warps)
    return min(by_regs, 233472 // (shared + 1024), 64 // num_warps, 32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TransXNet-T stage 1 and 3 only")
    parser.add_argument("--out", help="also write the markdown table here")
    opts = parser.parse_args()
    shapes = [STAGES[0], STAGES[2]] if opts.quick else STAGES + DETECTION
    dtypes = [torch.bfloat16, torch.float32] if opts.quick else [torch.bfloat16, torch.float16, torch.float32]
    lines = ["| shape (B, h, N, M, d) | dtype | layout | kernel | grid | warps | stages | BLOCK N x M x D | regs |"
             " spill B | smem KB | blocks/SM | tensor cores |", "|" + "---|" * 13]
    seen, bad = {}, 0
    for name, B, H, N, M, D in shapes:
        for dtype in dtypes:
            for cols in (False, True):
                for kernel, grid, args, kwargs in record(B, H, N, M, D, dtype, cols):
                    src, options, typed = compile_source(kernel, args, kwargs)
                    key = (kernel.fn.__name__, *typed, repr(sorted(options.items())))
                    if key not in seen:
                        try:
                            seen[key] = resources(triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                                                 options=options))
                        except Exception as exc:  # reported, counted, never hides the rest
                            seen[key] = dict(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    r = seen[key]
                    tag = (f"| {name} ({B}, {H}, {N}, {M}, {D}) | {TT[dtype]} | {'cols' if cols else 'rows'} | "
                           f"{kernel.fn.__name__} | {'x'.join(str(int(g)) for g in grid)} | "
                           f"{options.get('num_warps', 4)} | {options.get('num_stages', 3)} | ")
                    if "error" in r:
                        bad += 1
                        lines.append(tag + f"FAILED: {r['error']} |||||")
                    else:
                        blocks = "x".join(str(kwargs[k]) for k in ("BLOCK_N", "BLOCK_M", "BLOCK_D") if k in kwargs)
                        bad += r["spill"] > 0
                        lines.append(tag + f"{blocks or '-'} | {r['regs']} | {r['spill']} | {r['shared'] / 1024:.1f} | "
                                     f"{occupancy(r['regs'], r['shared'], options.get('num_warps', 4))} | "
                                     f"{' '.join(r['mma']) or '-'} |")
                    print(lines[-1], flush=True)
    summary = (f"\n{len(lines) - 2} launches, {len(seen)} distinct compiles for sm_90; "
               f"{bad} with spills or compile failures.")
    print(summary)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write("# OSRA attention Triton launches compiled for sm_90 (static; unmeasured on GPU)\n\n"
                    "Written by `python benchmarks/osra_triton_sm90.py`. Batch 128 for the TransXNet stages, bias "
                    "(1, h, N, M) with its gradient; `cols`: q/k/v/grad_out as the model passes them (transposed "
                    "views). Registers, spills and shared memory from cuobjdump of the sm_90 cubin.\n\n"
                    + "\n".join(lines) + "\n" + summary + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
