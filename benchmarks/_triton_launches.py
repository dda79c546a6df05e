"""Every Triton launch of the package, recorded on meta tensors and compiled for a GPU target without a GPU.

Used by tests/test_triton_gpu_compile.py (does every kernel compile, with fp32 *and* fp64 float scalars?) and by
benchmarks/kernel_report.py (registers, spills, shared memory, occupancy). Nothing here names a kernel: the Triton
custom ops are discovered (every `transxnet_ops::*_triton` forward op, after importing every module of
transxnet_ops/triton/), run forward and backward on meta tensors under `_register.recording()`, and each recorded
launch (kernel, grid, args, constexprs, num_warps) becomes a compile case. Two kinds of cases:
  - the whole TransXNet model (backend "triton") run forward + backward (train) and forward (eval) on meta
    tensors: every Triton op the model calls is found and attributed through a dispatch mode, with no list here;
  - per op family, inputs written here (`OP_INPUTS`) for shapes the model does not make (odd sizes, K up to 13,
    d up to 128, detection-size attention).
A registered Triton op that no case of a run launches is reported as a problem, so a new op cannot slip through.

Must run with TRITON_INTERPRET=0 (the launchers are then torch.library.triton_ops, which run their Python body on
meta tensors): run this file as a script, or call from a process that set it before importing triton.

    TRITON_INTERPRET=0 python benchmarks/_triton_launches.py --arch 90 --shapes odd --scalars fp32,fp64
"""
import argparse
import contextlib
import glob
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NS = "transxnet_ops"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# ----------------------------------------------------------------------------- shapes
# TransXNet-T / -S at 224 px (DESIGN.md): per stage (dim, side, heads, mlp_ratio); IDConv and OSRA get dim / 2.
MODELS = {"T": dict(dims=[48, 96, 224, 448], heads=[1, 2, 4, 8], mlp=[4, 4, 4, 4]),
          "S": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp=[6, 6, 4, 4])}
SIDES, SR = [56, 28, 14, 7], [8, 4, 2, 1]


def ms_splits(channels, kernel_sizes=(1, 3, 5, 7)):
    """MS-FFN's channel splits: equal parts, the first taking the remainder."""
    n = len(kernel_sizes)
    part = channels // n
    return [channels - part * (n - 1)] + [part] * (n - 1), list(kernel_sizes)


def transxnet_cases(models=("T", "S"), batch=128):
    """(op, label, shape dict) at the model's shapes: IDConv, static depthwise (DPE 7x7, MS-FFN 1/3/5/7, OSRA's
    3x3 local_conv, STE 3x3) and the attention core, plus detection-size attention."""
    cases = []
    for m in models:
        cfg = MODELS[m]
        for i, (dim, side, heads, mlp) in enumerate(zip(cfg["dims"], SIDES, cfg["heads"], cfg["mlp"])):
            st = f"{m}{i + 1}"
            half = dim // 2
            cases.append(("idconv", f"{st} idconv", dict(B=batch, C=half, H=side, W=side, K=7)))
            cases.append(("dwconv2d", f"{st} DPE 7x7", dict(B=batch, H=side, W=side, splits=[dim], ks=[7])))
            cases.append(("dwconv2d", f"{st} MS-FFN 1/3/5/7",
                          dict(B=batch, H=side, W=side, **dict(zip(("splits", "ks"), ms_splits(mlp * dim))))))
            kv_side = math.ceil(side / SR[i])
            cases.append(("dwconv2d", f"{st} local_conv 3x3", dict(B=batch, H=kv_side, W=kv_side, splits=[half],
                                                                   ks=[3])))
            cases.append(("dwconv2d", f"{st} STE 3x3", dict(B=batch, H=side, W=side, splits=[dim], ks=[3])))
            cases.append(("osra_attention", f"{st} attention",
                          dict(B=batch, h=heads, N=side * side, M=kv_side ** 2, d=half // heads)))
    cases.append(("osra_attention", "det N=65536 M=1024", dict(B=2, h=1, N=65536, M=1024, d=24)))
    cases.append(("osra_attention", "det N=16384 M=1024", dict(B=2, h=2, N=16384, M=1024, d=24)))
    return cases


MODEL_LABEL = "model TransXNet-"


def model_case(arch, batch, height, width):
    return ("model", f"{MODEL_LABEL}{arch.upper()} {height}x{width} b={batch}", dict(arch=arch, B=batch, H=height,
                                                                                  W=width))


def odd_cases():
    """Small odd shapes: the model on an odd input (stages 14x18, 7x9, 4x5, 2x3), partial tiles everywhere, kernel
    sizes on both sides of the register-window limit, wide maps, key counts past one block, d up to 128."""
    return [model_case("t", 3, 56, 72),
            ("idconv", "odd K=7", dict(B=2, C=3, H=9, W=11, K=7)),
            ("idconv", "odd K=3", dict(B=3, C=5, H=5, W=7, K=3)),
            ("idconv", "odd K=11", dict(B=2, C=3, H=13, W=9, K=11)),
            ("dwconv2d", "odd 7x7", dict(B=2, H=9, W=11, splits=[5], ks=[7])),
            ("dwconv2d", "odd 1/3/5/7", dict(B=2, H=9, W=11, splits=[3, 2, 2, 2], ks=[1, 3, 5, 7])),
            ("dwconv2d", "odd 13x13", dict(B=3, H=11, W=70, splits=[3], ks=[13])),
            ("osra_attention", "odd d=20", dict(B=2, h=2, N=37, M=11, d=20)),
            ("osra_attention", "odd M=70 d=72", dict(B=1, h=3, N=13, M=70, d=72)),
            ("osra_attention", "odd M=300 d=24", dict(B=1, h=2, N=21, M=300, d=24)),
            ("osra_attention", "odd d=128", dict(B=2, h=1, N=19, M=5, d=128))]


SHAPE_SETS = {"odd": odd_cases,
              "transxnet": lambda: [model_case("t", 128, 224, 224), model_case("s", 128, 224, 224),
                                    *transxnet_cases(("T", "S"))],
              "transxnet-t": lambda: [model_case("t", 128, 224, 224), *transxnet_cases(("T",))]}


# ----------------------------------------------------------------------------- inputs of each op family
def _meta(*shape, dtype, grad=True):
    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=grad)


def _idconv_inputs(s, dtype):
    B, C, H, W, K = s["B"], s["C"], s["H"], s["W"], s["K"]
    return (_meta(B, C, H, W, dtype=dtype), _meta(B, C, K, K, dtype=dtype), _meta(B, C, dtype=dtype)), {}


def _dwconv2d_inputs(s, dtype):
    C = sum(s["splits"])
    packed = sum(c * k * k for c, k in zip(s["splits"], s["ks"]))
    return (_meta(s["B"], C, s["H"], s["W"], dtype=dtype), _meta(packed, dtype=dtype), _meta(C, dtype=dtype),
            list(s["splits"]), list(s["ks"])), {}


def _osra_attention_inputs(s, dtype):
    B, h, N, M, d = s["B"], s["h"], s["N"], s["M"], s["d"]
    return (_meta(B, h, N, d, dtype=dtype), _meta(B, h, M, d, dtype=dtype), _meta(B, h, M, d, dtype=dtype),
            _meta(1, h, N, M, dtype=dtype), d ** -0.5), {}


# forward op (public name) -> inputs(shape dict, dtype); its backward runs through the registered autograd
OP_INPUTS = {"idconv": _idconv_inputs, "dwconv2d": _dwconv2d_inputs, "osra_attention": _osra_attention_inputs}


# ----------------------------------------------------------------------------- discovery and recording
def import_triton_modules():
    """Import every launcher module of transxnet_ops/triton/ (registers the *_triton custom ops)."""
    folder = os.path.join(ROOT, "transxnet_ops", "triton")
    modules = []
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name != "__init__":
            modules.append(importlib.import_module(f"transxnet_ops.triton.{name}"))
    return modules


def triton_forward_ops():
    """Base names of the registered Triton forward ops (`transxnet_ops::X_triton`, X without `_backward`)."""
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith(NS + "::")]
    return sorted({n[: -len("_triton")] for n in names if n.endswith("_triton") and "_backward" not in n})


def record_op(op, inputs, dtype, shape):
    """Launches of one forward + backward of `transxnet_ops::{op}_triton` on meta tensors: [(phase, launch)]."""
    from transxnet_ops.triton._register import recording

    args, kwargs = inputs(shape, dtype)
    with recording() as launches:
        out = getattr(getattr(torch.ops, NS), f"{op}_triton")(*args, **kwargs)
        n_forward = len(launches)
        first = out[0] if isinstance(out, (tuple, list)) else out
        first.backward(torch.empty_like(first))
    return [("fwd" if i < n_forward else "bwd", launch) for i, launch in enumerate(launches)]


class _OpTracker(TorchDispatchMode):
    """Attributes each recorded launch to the innermost `transxnet_ops::*_triton` op running at the time:
    `attributed[i]` = (op family, "fwd" | "bwd") of launches[i], or None outside every such op."""

    def __init__(self, launches, attributed):
        super().__init__()
        self.launches, self.attributed, self.stack = launches, attributed, []

    def _flush(self):
        owner = self.stack[-1] if self.stack else None
        self.attributed.extend([owner] * (len(self.launches) - len(self.attributed)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not (name.startswith(NS + "::") and name.endswith("_triton")):
            return func(*args, **(kwargs or {}))
        base = name.split("::", 1)[1][: -len("_triton")]
        self._flush()
        self.stack.append((base.removesuffix("_backward"), "bwd" if base.endswith("_backward") else "fwd"))
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self._flush()
            self.stack.pop()


@contextlib.contextmanager
def _meta_runs_triton():
    """Let the package's dispatch send meta tensors to the Triton launchers: the backend resolves to "triton" for
    meta, and meta has no autocast state (torch raises on asking). Harness only: restored on exit."""
    from transxnet_ops import backends

    resolve, autocast_enabled = backends.resolve, torch.is_autocast_enabled
    backends.resolve = lambda name, device_type: "triton" if device_type == "meta" else resolve(name, device_type)
    torch.is_autocast_enabled = lambda *a: False if a and str(a[0]) == "meta" else autocast_enabled(*a)
    try:
        yield
    finally:
        backends.resolve, torch.is_autocast_enabled = resolve, autocast_enabled


def record_model(shape, dtype):
    """Launches of the whole model on meta tensors, backend "triton": a training forward + backward, then an eval
    forward -> [(op, phase, launch)]."""
    from transxnet_ops import models
    from transxnet_ops.triton._register import recording

    model = getattr(models, f"transxnet_{shape['arch']}")(backend="triton").to(device="meta", dtype=dtype)
    x = torch.empty(shape["B"], 3, shape["H"], shape["W"], device="meta", dtype=dtype)
    attributed = []
    with _meta_runs_triton(), recording() as launches, _OpTracker(launches, attributed) as tracker:
        model.train()
        model(x).float().sum().backward()
        model.eval()
        with torch.no_grad():
            model(x)
        tracker._flush()
    if None in attributed:
        raise RuntimeError("a Triton kernel was launched outside every transxnet_ops::*_triton op")
    return [(op, phase, launch) for (op, phase), launch in zip(attributed, launches)]


def record_all(shape_sets, dtypes):
    """-> (launch records, problems). A record: dict(op, label, dtype, phase, kernel, grid, args, kwargs)."""
    import_triton_modules()
    records, problems = [], []
    ops = triton_forward_ops()
    cases = [c for s in shape_sets for c in SHAPE_SETS[s]()]
    for op, label, shape in cases:
        if op != "model" and op not in ops:
            continue  # that family has no Triton op (yet)
        for dname in dtypes:
            try:
                if op == "model":
                    launched = record_model(shape, DTYPES[dname])
                else:
                    launched = [(op, phase, launch) for phase, launch in
                                record_op(op, OP_INPUTS[op], DTYPES[dname], shape)]
                for owner, phase, (kernel, grid, args, kwargs) in launched:
                    records.append(dict(op=owner, label=label, dtype=dname, phase=phase, kernel=kernel, grid=grid,
                                        args=args, kwargs=kwargs))
            except Exception as exc:  # a launcher that fails on meta tensors is a finding, not a crash
                problems.append(f"{op} {label} {dname}: failed on meta tensors: "
                                f"{type(exc).__name__}: {_first_line(exc)}")
    launched_ops = {r["op"] for r in records}
    for op in ops:
        if op not in launched_ops:
            problems.append(f"Triton op transxnet_ops::{op}_triton is launched by no case of {shape_sets}: neither "
                            f"the model calls it nor has it an input builder in benchmarks/_triton_launches.py "
                            f"OP_INPUTS, so its kernels are not checked")
    return records, problems


def all_jit_functions():
    """Every @triton.jit function defined in transxnet_ops/triton/ (kernels and device helpers)."""
    from triton.runtime.jit import JITFunction

    found = {}
    for module in import_triton_modules():
        for value in vars(module).values():
            if isinstance(value, JITFunction) and value.fn.__module__ == module.__name__:
                found[value.fn.__qualname__] = value
    return found


def never_launched(records):
    """@triton.jit functions that no recorded case launches and no other jit function calls: dead or untested."""
    launched = {unwrap(r["kernel"])[0].fn.__qualname__ for r in records}
    functions = all_jit_functions()
    sources = {name: fn.src for name, fn in functions.items()}
    return sorted(name for name in functions if name not in launched and not any(
        re.search(rf"\b{re.escape(name)}\s*\(", src) for other, src in sources.items() if other != name))


# ----------------------------------------------------------------------------- compile cases
def unwrap(kernel):
    """(JITFunction, autotune configs or [None], heuristics) of a launched kernel object."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    configs, heuristics = [None], {}
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Autotuner):
            configs = list(kernel.configs)
        elif isinstance(kernel, Heuristics):
            heuristics.update(kernel.values)
        kernel = kernel.fn
    return kernel, configs, heuristics


def _specialize(value, param):
    """(type, divisible-by-16) of a runtime argument, as Triton's JIT specialises it."""
    if param.annotation_type:
        return param.annotation_type, False
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend

        ty, attr = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                          not param.do_not_specialize_on_alignment)
        return ty, attr == "D"
    except ImportError:  # older Triton: the same rules, written out
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            return "constexpr", False
        if isinstance(value, bool):
            return "i1", False
        if isinstance(value, int):
            return ("i32" if -2 ** 31 <= value < 2 ** 31 else "i64"), value % 16 == 0
        if isinstance(value, float):
            return "fp32", False
        if isinstance(value, torch.Tensor):
            names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                     torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
            return "*" + names[value.dtype], True
        raise TypeError(f"cannot type a kernel argument of type {type(value).__name__}")


def compile_cases(record, scalar_types=("fp32",)):
    """The compile cases of one recorded launch: one per autotune config x float-scalar type.

    A case: dict(fn, name, signature, constexprs, attrs, options, scalar, config, has_float, programs)."""
    fn, configs, heuristics = unwrap(record["kernel"])
    params = fn.params
    cases = []
    for config in configs:
        bound, options = {}, {}
        for p, value in zip(params, record["args"]):
            bound[p.name] = value
        kwargs = dict(record["kwargs"])
        if config is not None:
            kwargs.update(config.kwargs)
            options.update(num_warps=config.num_warps, num_stages=config.num_stages)
            if getattr(config, "maxnreg", None) is not None:
                options["maxnreg"] = config.maxnreg
        for key, value in kwargs.items():
            (bound.__setitem__ if key in fn.arg_names else options.__setitem__)(key, value)
        for p in params:
            if p.name not in bound and p.has_default:
                bound[p.name] = p.default
        for name, rule in heuristics.items():
            bound[name] = rule(bound)
        missing = [p.name for p in params if p.name not in bound]
        if missing:
            raise TypeError(f"{fn.__name__}: launch leaves {missing} unbound")
        floats = [p.name for p in params if not p.is_constexpr and isinstance(bound[p.name], float)
                  and not p.annotation_type]
        grid = record["grid"](bound) if callable(record["grid"]) else record["grid"]
        for scalar in (scalar_types if floats else scalar_types[:1]):
            signature, constexprs, attrs = {}, {}, {}
            for i, p in enumerate(params):
                value = bound[p.name]
                if p.is_constexpr:
                    signature[p.name], constexprs[(i,)] = "constexpr", value
                    continue
                ty, divisible = _specialize(value, p)
                if ty == "constexpr":
                    constexprs[(i,)] = value
                elif p.name in floats:
                    ty = scalar
                if divisible:
                    attrs[(i,)] = [["tt.divisibility", 16]]
                signature[p.name] = ty
            cases.append(dict(fn=fn, name=fn.__name__, signature=signature, constexprs=constexprs, attrs=attrs,
                              options=options, scalar=scalar if floats else None, config=config,
                              programs=math.prod(int(g) for g in grid)))
    return cases


def case_key(case, arch, with_attrs=True):
    return (case["fn"].fn.__module__, case["name"], arch, tuple(case["signature"].items()),
            tuple((k, repr(v)) for k, v in sorted(case["constexprs"].items())),
            repr(sorted(case["attrs"].items())) if with_attrs else None, tuple(sorted(case["options"].items())))


def compile_case(case, arch):
    """triton.compile for sm_<arch>; -> (compiled kernel, None) or (None, error text)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(case["fn"], case["signature"], constexprs=case["constexprs"], attrs=case["attrs"])
    try:
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(case["options"])), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {_error_text(exc)}"


def resource_usage(compiled):
    """Registers, local memory (spills + stack) and static shared memory of a compiled kernel, read off its cubin
    by cuobjdump (Triton's metadata gives these only once a GPU loads the kernel). None if cuobjdump is missing."""
    tool = _cuobjdump()
    if tool is None or "cubin" not in compiled.asm:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
    if not m:
        return None
    regs, stack, shared, local = map(int, m.groups())
    return dict(regs=regs, stack=stack, static_shared=shared, local=local)


def _cuobjdump():
    try:
        from triton.backends.nvidia import compiler as nv

        path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"), "cuobjdump"):
        if os.path.exists(cand) or (cand == "cuobjdump" and subprocess.run(["which", cand], capture_output=True)
                                    .returncode == 0):
            return cand
    return None


def _first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _error_text(exc):
    """The informative part of a Triton compile error (its message names the kernel line)."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-4:])[:600] if lines else type(exc).__name__


# ----------------------------------------------------------------------------- command line (used by the test)
def distinct_cases(records, archs, scalars, problems, with_attrs=True):
    """[(record, case, arch)] with duplicates (same kernel, signature, constexprs, options, and unless
    `with_attrs` is off, divisibility attributes) dropped. Without attributes each case compiles with the first
    attribute set seen: the divisibility hints change vectorisation, hardly ever whether a kernel compiles."""
    seen, out = set(), []
    for record in records:
        try:
            cases = compile_cases(record, scalars)
        except Exception as exc:
            problems.append(f"{record['label']} {record['dtype']}: {type(exc).__name__}: {_first_line(exc)}")
            continue
        for case in cases:
            for arch in archs:
                key = case_key(case, arch, with_attrs)
                if key not in seen:
                    seen.add(key)
                    out.append((record, case, arch))
    return out


def check(archs, shape_sets, dtypes, scalars, shard=(0, 1), compile=True, with_attrs=False):
    """Record, compile every distinct case for every arch (those of this shard: index % n == i);
    -> summary dict (printed as JSON by main)."""
    start = time.time()
    records, problems = record_all(shape_sets, dtypes)
    results = []
    for index, (record, case, arch) in enumerate(distinct_cases(records, archs, scalars, problems, with_attrs)):
        if index % shard[1] != shard[0]:
            continue
        error = compile_case(case, arch)[1] if compile else None
        results.append(dict(kernel=case["name"], op=record["op"], label=record["label"], dtype=record["dtype"],
                            arch=arch, scalar=case["scalar"], options=case["options"], error=error,
                            constexprs={case["fn"].arg_names[k[0]]: repr(v) for k, v in case["constexprs"].items()}))
    dead = never_launched(records)
    return dict(ops=triton_forward_ops(), kernels=sorted({r["kernel"] for r in results}), compiled=results,
                problems=problems, never_launched=dead, seconds=round(time.time() - start, 1))


def main():
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run with TRITON_INTERPRET=0: the interpreter does not compile kernels")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 90)")
    p.add_argument("--shapes", default="odd", help=f"comma list of {sorted(SHAPE_SETS)}")
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    p.add_argument("--scalars", default="fp32,fp64", help="types given to float arguments (inductor passes fp64)")
    p.add_argument("--shard", default="0/1", help="i/n: compile only the cases whose index %% n == i")
    p.add_argument("--list", action="store_true", help="list the distinct cases, compile nothing")
    p.add_argument("--every-alignment", action="store_true",
                   help="also compile each divisibility-by-16 pattern of the arguments apart (many more cases)")
    p.add_argument("--json", help="also write the summary (JSON) to this file")
    args = p.parse_args()
    shard = tuple(int(v) for v in args.shard.split("/"))
    summary = check(args.arch or [90], args.shapes.split(","), args.dtypes.split(","), tuple(args.scalars.split(",")),
                    shard, compile=not args.list, with_attrs=args.every_alignment)
    for r in summary["compiled"]:
        status = "case" if args.list else "ok  " if r["error"] is None else "FAIL"
        scalar = f" scalars={r['scalar']}" if r["scalar"] else ""
        print(f"{status} sm_{r['arch']} {r['kernel']} [{r['op']} {r['label']} {r['dtype']}{scalar}]"
              + ("" if r["error"] is None else f": {r['error']}"))
    for line in summary["problems"]:
        print(f"PROBLEM {line}")
    for name in summary["never_launched"]:
        print(f"PROBLEM @triton.jit {name} is never launched by any case and called by no other kernel")
    failed = sum(r["error"] is not None for r in summary["compiled"])
    print(f"{len(summary['compiled'])} compiles, {failed} failed, {len(summary['problems'])} problems, "
          f"{summary['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, default=str)
    sys.exit(1 if failed or summary["problems"] or summary["never_launched"] else 0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        sys.exit(2)
