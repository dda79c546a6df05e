"""Registers, spills and shared memory of every Triton launch of the OSRA reduce path and the IDConv weight
generation at TransXNet shapes (224px, batch 128), compiled for sm_90 without a GPU.

The launchers run on meta tensors inside `_register.recording()`, so each kernel is compiled exactly as it would be
launched at that shape (constexprs, warps, and Triton's runtime specialisation of the arguments: 16-divisible
integers and pointers, integers equal to 1); ptxas -v (the one shipped with Triton) reports the figures.

    python scripts/sm90_reduce_report.py                     # T, S, B in bf16 and fp32
    python scripts/sm90_reduce_report.py --models T --dtypes bf16

Exits 1 if a kernel fails to compile or spills. Needs TRITON_INTERPRET unset (set here before triton loads).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.backends.nvidia as nvidia  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import native_specialize_impl  # noqa: E402

from transxnet_ops.triton import _register, idconv_weights as tw, reduce as tr  # noqa: E402

# (OSRA / IDConv channels = dim / 2 per stage, IDConv groups per stage); sides 56, 28, 14, 7; sr 8, 4, 2 (stage 4's
# sr 1 is a plain depthwise conv); IDConv K = 7 everywhere
MODELS = {"T": ([48, 96, 224, 448], [2, 2, 2, 2]),
          "S": ([64, 128, 320, 512], [2, 2, 3, 4]),
          "B": ([76, 152, 336, 672], [2, 2, 4, 4])}
SIDES, SR_RATIOS, K, BATCH = (56, 28, 14, 7), (8, 4, 2), 7, 128
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PTXAS = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")


def reduce_launches(C, side, sr, dtype):
    """Both osra_reduce launchers, eval and training (parameters fp32, as under autocast)."""
    act, f32 = dict(device="meta", dtype=dtype), dict(device="meta", dtype=torch.float32)
    x, k, Ho = torch.empty(BATCH, C, side, side, **act), sr + 3, tr.reduced_size(side, sr)
    params = [torch.empty(C, 1, k, k, **f32)] + [torch.empty(C, **f32) for _ in range(4)] + \
        [torch.empty(C, 1, 1, 1, **f32)] + [torch.empty(C, **f32) for _ in range(4)] + \
        [torch.empty(C, 1, 3, 3, **f32), torch.empty(C, **f32)]
    grad_params = [params[i] for i in (0, 1, 2, 5, 6, 7, 10, 11)]
    gy, u = torch.empty(BATCH, C, Ho, Ho, **act), torch.empty(BATCH, C, Ho, Ho, **act)
    stats = torch.empty(6, C, **f32)
    for training in (False, True):
        tr.osra_reduce_triton._init_fn(x, *params, sr, 1e-5, 1e-5, training, True)
        tr.osra_reduce_backward_triton._init_fn(gy, x, u, stats, *grad_params, sr, 1e-5, 1e-5, training)


def weight_launches(C, G, dtype):
    """Both idconv_weights launchers: eval (one packed (K+1)x(K+1) proj output) and training (two proj outputs)."""
    act, f32 = dict(device="meta", dtype=dtype), dict(device="meta", dtype=torch.float32)
    w, b = torch.empty(G, C, K, K, **f32), torch.empty(G, C, **f32)
    packed = torch.empty(BATCH, G * C, K + 1, K + 1, **act)
    logits, bias_logits = torch.empty(BATCH, G * C, K, K, **act), torch.empty(BATCH, G * C, **act)
    for lg, blg in ((packed, None), (logits, bias_logits)):
        tw.idconv_weights_triton._init_fn(lg, blg, w, b)
        tw.idconv_weights_backward_triton._init_fn(torch.empty(BATCH, C, K, K, **act), torch.empty(BATCH, C, **act),
                                                   lg, blg, w, b)


def specialise(fn, args, kwargs):
    """Triton's runtime signature of a launch: (signature, constexprs, attrs) as JITFunction.run builds them."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(fn.arg_names, args)):
        ty, key = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = key
        elif isinstance(key, str):
            attrs[(i,)] = BaseBackend.parse_attr(key)
    for name, value in kwargs.items():
        if name in fn.arg_names:
            signature[name] = "constexpr"
            constexprs[(fn.arg_names.index(name),)] = value
    return signature, constexprs, attrs


def ptxas_figures(ptx):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([PTXAS, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill", log))
    return regs, spills


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="T,S,B")
    parser.add_argument("--dtypes", default="bf16,fp32")
    opts = parser.parse_args()
    launches = []
    for dtype_name in opts.dtypes.split(","):
        for model in opts.models.split(","):
            dims, groups = MODELS[model]
            with _register.recording() as recorded:
                for dim, side, sr in zip(dims, SIDES, SR_RATIOS):
                    reduce_launches(dim // 2, side, sr, DTYPES[dtype_name])
                for dim, G in zip(dims, groups):
                    weight_launches(dim // 2, G, DTYPES[dtype_name])
            launches += [(model, dtype_name, *launch) for launch in recorded]

    print(f"{'kernel':22s} {'dtype':5s} {'models':6s} {'constexprs':60s} {'warps':>5s} {'regs':>4s} {'spill':>5s} "
          f"{'smem':>5s}")
    configs, failures = {}, 0
    for model, dtype_name, kernel, grid, args, kwargs in launches:
        signature, constexprs, attrs = specialise(kernel, args, kwargs)
        warps = kwargs.get("num_warps", 4)
        key = (kernel.fn.__name__, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())),
               tuple(sorted((k, str(v)) for k, v in attrs.items())), warps)
        configs.setdefault(key, (kernel, dtype_name, signature, constexprs, attrs, kwargs, []))[-1].append(model)
    for kernel, dtype_name, signature, constexprs, attrs, kwargs, models in configs.values():
        warps = kwargs.get("num_warps", 4)
        shown = ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "num_warps" and not k.startswith("IS_"))
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            regs, spills = ptxas_figures(compiled.asm["ptx"])
        except Exception as exc:  # a kernel the compiler rejects is a failure, reported with its launch
            failures += 1
            print(f"FAIL {kernel.fn.__name__} {dtype_name} {shown}: {type(exc).__name__}: {exc}")
            continue
        failures += spills > 0
        print(f"{kernel.fn.__name__:22s} {dtype_name:5s} {''.join(sorted(set(models))):6s} {shown[:60]:60s} "
              f"{warps:5d} {regs:4d} {spills:5d} {compiled.metadata.shared:5d}")
    print(f"{len(configs)} kernel configurations from {len(launches)} launches; "
          f"{failures} failed or spilled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
