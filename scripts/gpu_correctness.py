"""Correctness of every op x backend x dtype against the float64 reference, forward and every gradient, each case
isolated: a failing case is listed with its error and never stops the run.

    python scripts/gpu_correctness.py --out correctness.md               # GPU: cuda and triton backends
    python scripts/gpu_correctness.py --device cpu --shapes tiny          # CPU (the dry run of gpu_check.sh)
    python scripts/gpu_correctness.py --in-process --backends cuda --shapes sanitize   # under compute-sanitizer

Each case: random inputs (the layout the case names), the op and its gradients for a random grad_out, compared with
the same computation in float64 by relative norm error (tolerances of tests/utils.py; NaN never passes); the
caching allocator is poisoned with NaN first so unwritten outputs fail; backward runs twice and the gradients must
agree bitwise (deterministic). Cases run in a child process; when one crashes, hangs or leaves a sticky CUDA error,
the child is restarted after it, so every other case still runs.
"""
import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-2}
MARK = "CASE_RESULT "

# shape sets: op -> [(label, shape)]; layout "cl" = channels_last x (conv ops) or transposed-stride q (attention)
SHAPES = {
    "tiny": {
        "idconv": [("odd K=3", dict(B=2, C=3, H=5, W=7, K=3))],
        "dwconv2d": [("odd k=5", dict(B=2, H=5, W=7, splits=[3], ks=[5]))],
        "multiscale_dwconv2d": [("odd 1/3/5/7", dict(B=2, H=5, W=7, splits=[3, 2, 2, 2], ks=[1, 3, 5, 7]))],
        "osra_attention": [("odd d=20", dict(B=2, h=2, N=9, M=5, d=20))],
        "idconv_weights": [("G=3 K=3", dict(B=2, G=3, C=3, K=3))],
        "osra_reduce": [("sr=2 odd train", dict(B=2, C=3, H=9, W=13, sr=2, train=1))],
    },
    "sanitize": {  # small odd shapes, partial tiles everywhere
        "idconv": [("odd K=7", dict(B=2, C=3, H=9, W=11, K=7)), ("odd K=3 cl", dict(B=3, C=5, H=7, W=5, K=3, cl=1))],
        "dwconv2d": [("odd k=7", dict(B=2, H=9, W=11, splits=[5], ks=[7]))],
        "multiscale_dwconv2d": [("odd 1/3/5/7", dict(B=2, H=9, W=11, splits=[3, 2, 2, 2], ks=[1, 3, 5, 7]))],
        "osra_attention": [("odd d=20", dict(B=2, h=2, N=37, M=11, d=20)),
                           ("odd M=70 d=72", dict(B=1, h=3, N=13, M=70, d=72))],
        "idconv_weights": [("G=3 K=7", dict(B=3, G=3, C=5, K=7))],
        "osra_reduce": [("sr=2 odd eval", dict(B=2, C=3, H=9, W=13, sr=2, train=0)),
                        ("sr=4 odd train", dict(B=2, C=3, H=17, W=11, sr=4, train=1))],
    },
    "gpu": {  # odd shapes, layouts, every head-dim bucket, and model-sized cases
        "idconv": [("odd K=7", dict(B=2, C=3, H=9, W=11, K=7)), ("odd K=3 cl", dict(B=3, C=5, H=7, W=5, K=3, cl=1)),
                   ("K=31", dict(B=1, C=2, H=33, W=35, K=31)), ("T1 B=4", dict(B=4, C=24, H=56, W=56, K=7)),
                   ("T4 B=8", dict(B=8, C=224, H=7, W=7, K=7))],
        "dwconv2d": [("odd k=7", dict(B=2, H=9, W=11, splits=[5], ks=[7])),
                     ("DPE T1 B=4 cl", dict(B=4, H=56, W=56, splits=[48], ks=[7], cl=1)),
                     ("local_conv 3x3", dict(B=4, H=7, W=7, splits=[24], ks=[3])),
                     ("k=13 wide", dict(B=3, H=11, W=70, splits=[3], ks=[13]))],
        "multiscale_dwconv2d": [("odd 1/3/5/7", dict(B=2, H=9, W=11, splits=[3, 2, 2, 2], ks=[1, 3, 5, 7])),
                                ("MS-FFN T2 B=4", dict(B=4, H=28, W=28, splits=[96, 96, 96, 96], ks=[1, 3, 5, 7]))],
        "osra_attention": [("odd d=20", dict(B=2, h=2, N=37, M=11, d=20)),
                           ("odd M=70 d=72", dict(B=1, h=3, N=13, M=70, d=72)),
                           ("d=128 bias (N,M)", dict(B=2, h=2, N=33, M=17, d=128, bias2d=1)),
                           ("T1 B=4", dict(B=4, h=1, N=3136, M=49, d=24)),
                           ("T4 B=8 q strided", dict(B=8, h=8, N=49, M=49, d=28, cl=1)),
                           ("det M=1024 B=1", dict(B=1, h=1, N=4096, M=1024, d=24))],
        "idconv_weights": [("G=3 K=7", dict(B=3, G=3, C=5, K=7)), ("T1 B=16", dict(B=16, G=2, C=24, K=7))],
        "osra_reduce": [("sr=2 odd eval", dict(B=2, C=3, H=9, W=13, sr=2, train=0)),
                        ("sr=4 odd train", dict(B=2, C=3, H=17, W=11, sr=4, train=1)),
                        ("T1 sr=8 B=4 train", dict(B=4, C=24, H=56, W=56, sr=8, train=1)),
                        ("T1 sr=8 B=4 eval", dict(B=4, C=24, H=56, W=56, sr=8, train=0))],
    },
}


def all_cases(args):
    cases = []
    for op, shapes in SHAPES[args.shapes].items():
        for backend in args.backends:
            for dtype in args.dtypes:
                if backend == "triton" and args.device == "cpu" and dtype != "fp32":
                    continue  # the interpreter runs on numpy: no bf16, and fp16 is not a CPU speed path
                for label, shape in shapes:
                    cases.append(dict(op=op, backend=backend, dtype=dtype, label=label, shape=shape))
    return cases


# ----------------------------------------------------------------------------- one case (child side)
def make_inputs(op, s, dtype, device):
    """-> (positional inputs of the public op, names of the differentiable ones, kwargs)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(repr((op, sorted(s.items()))).encode()))
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    if op == "idconv":
        x = rnd(s["B"], s["C"], s["H"], s["W"])
        if s.get("cl"):
            x = x.contiguous(memory_format=torch.channels_last)
        return [x, rnd(s["B"], s["C"], s["K"], s["K"]), rnd(s["B"], s["C"])], ["x", "weight", "bias"], {}
    if op in ("dwconv2d", "multiscale_dwconv2d"):
        x = rnd(s["B"], sum(s["splits"]), s["H"], s["W"])
        if s.get("cl"):
            x = x.contiguous(memory_format=torch.channels_last)
        ws = [rnd(c, 1, k, k) for c, k in zip(s["splits"], s["ks"])]
        bs = [rnd(c) for c in s["splits"]]
        if op == "dwconv2d":
            return [x, ws[0], bs[0]], ["x", "weight", "bias"], {}
        return [x, ws, bs], ["x", "weights", "biases"], {}
    if op == "idconv_weights":
        B, G, C, K = s["B"], s["G"], s["C"], s["K"]
        return ([rnd(B, G * C, K, K), rnd(B, G * C), rnd(G, C, K, K), rnd(G, C)],
                ["logits", "bias_logits", "weight", "bias"], {})
    if op == "osra_reduce":
        C, k = s["C"], s["sr"] + 3
        x = rnd(s["B"], C, s["H"], s["W"])
        params = [rnd(C, 1, k, k) / k, 1 + 0.2 * rnd(C), 0.2 * rnd(C), rnd(C, 1, 1, 1), 1 + 0.2 * rnd(C), 0.2 * rnd(C),
                  rnd(C, 1, 3, 3) / 3, 0.2 * rnd(C)]
        names = ["x", "conv1_weight", "bn1_weight", "bn1_bias", "conv2_weight", "bn2_weight", "bn2_bias",
                 "local_weight", "local_bias"]
        return [x] + params, names, dict(sr_ratio=s["sr"], training=bool(s["train"]))
    B, h, N, M, d = s["B"], s["h"], s["N"], s["M"], s["d"]
    q = rnd(B, h, d, N).transpose(-1, -2) if s.get("cl") else rnd(B, h, N, d)  # a non-contiguous q
    bias = rnd(N, M) if s.get("bias2d") else rnd(1, h, N, M)
    return [q, rnd(B, h, M, d), rnd(B, h, M, d), bias], ["q", "k", "v", "bias"], {}


def _osra_reduce(x, conv1_weight, bn1_weight, bn1_bias, conv2_weight, bn2_weight, bn2_bias, local_weight, local_bias,
                 sr_ratio, training, backend):
    """transxnet_ops.reduce.osra_reduce with fixed running statistics in x's dtype (not differentiable); -> kv_in."""
    import torch

    from transxnet_ops import reduce

    C = x.shape[1]
    mean = 0.1 * torch.linspace(-1, 1, C, device=x.device, dtype=x.dtype)
    var = 1 + 0.5 * torch.linspace(0, 1, C, device=x.device, dtype=x.dtype)
    return reduce.osra_reduce(x, conv1_weight, bn1_weight, bn1_bias, mean, var, conv2_weight, bn2_weight, bn2_bias,
                              mean.flip(0), var.flip(0), local_weight, local_bias, sr_ratio, training=training,
                              backend=backend)[0]


def op_function(op):
    """The public function a case calls (its outputs: a tensor or a tuple of differentiable tensors)."""
    import transxnet_ops

    if op == "osra_reduce":
        return _osra_reduce
    if op == "idconv_weights":
        from transxnet_ops.idconv_weights import idconv_weights
        return idconv_weights
    return getattr(transxnet_ops, op)


def _leaves(inputs):
    """Flatten inputs (lists of tensors for the multi-scale op) into the tensors that take gradients."""
    out = []
    for t in inputs:
        out += list(t) if isinstance(t, (list, tuple)) else [t]
    return out


def _with_leaves(inputs, leaves):
    it, rebuilt = iter(leaves), []
    for t in inputs:
        rebuilt.append([next(it) for _ in t] if isinstance(t, (list, tuple)) else next(it))
    return rebuilt


def _poison(device, nbytes):
    """Fill the allocator's free memory with NaN: an output element the kernel leaves unwritten reads NaN."""
    import torch

    if device == "cuda":
        junk = torch.full((max(nbytes, 1 << 20) // 4,), float("nan"), device=device)
        del junk


def run_case(case, device):
    import torch

    import transxnet_ops
    from transxnet_ops import _ext
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case["dtype"]]
    backend = case["backend"]
    if backend not in transxnet_ops.available_backends(device):
        why = _ext.LOAD_ERROR if backend in ("cpu", "cuda") and _ext.LOAD_ERROR else \
            _ext.TRITON_ERROR if backend == "triton" and _ext.TRITON_ERROR else "not built for this device"
        return dict(status="FAIL", error=f"backend {backend!r} unavailable on {device}: {why}")
    missing = _missing_kernel(case["op"], backend, device)
    if missing:
        return dict(status="MISSING", error=missing)
    fn = op_function(case["op"])
    inputs, names, kwargs = make_inputs(case["op"], case["shape"], dtype, device)
    leaves = [t.requires_grad_() for t in _leaves(inputs)]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_inputs = _with_leaves(inputs, ref_leaves)
    refs = _outputs(fn(*ref_inputs, backend="reference", **kwargs))
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(repr(sorted(case.items())).encode()))  # reproducible
    grad_outs = [torch.randn(r.shape, generator=g).to(device=device, dtype=dtype) for r in refs]
    ref_grads = torch.autograd.grad(refs, ref_leaves, [g.double() for g in grad_outs])
    _poison(device, 8 * sum(t.numel() * t.element_size() for t in leaves + refs))

    def forward_backward():
        outs = _outputs(fn(*inputs, backend=backend, **kwargs))
        grads = torch.autograd.grad(outs, leaves, grad_outs)
        if device == "cuda":
            torch.cuda.synchronize()
        return outs, grads

    outs, grads = forward_backward()
    errors = {("out" if i == 0 else f"out[{i}]"): _rel_err(o, r) for i, (o, r) in enumerate(zip(outs, refs))}
    leaf_names = []
    for n, t in zip(names, inputs):
        leaf_names += [f"{n}[{i}]" for i in range(len(t))] if isinstance(t, (list, tuple)) else [n]
    floor = _cancelling_floor(case, dict(zip(leaf_names, ref_grads)))
    for n, gr, rg in zip(leaf_names, grads, ref_grads):
        errors[f"grad_{n}"] = _rel_err(gr, rg, floor.get(n, 0.0))
    _, grads2 = forward_backward()
    nondet = [n for n, a, b in zip(leaf_names, grads, grads2) if not torch.equal(a, b)]
    worst = max(errors, key=lambda k: errors[k])
    bad = [k for k, e in errors.items() if not e <= _tolerance(case, k)]  # NaN fails
    status = "PASS" if not bad and not nondet else "FAIL"
    error = None
    if bad:
        error = "error above tol " + ", ".join(f"{k}={errors[k]:.2e}" for k in bad)
    if nondet:
        error = (error + "; " if error else "") + "gradients differ run to run: " + ", ".join(nondet)
    return dict(status=status, max_err=errors[worst], worst=worst, deterministic=not nondet, error=error)


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _missing_kernel(op, backend, device):
    """Why `backend` has no kernel for `op` (a backend that has not implemented it yet), or None."""
    import torch

    base = "dwconv2d" if op == "multiscale_dwconv2d" else op
    if backend == "triton":
        name = f"{base}_triton"
        return None if hasattr(torch.ops.transxnet_ops, name) else f"transxnet_ops::{name} is not registered"
    key = "CUDA" if device == "cuda" else "CPU"
    name = f"transxnet_ops::{base}"
    try:
        if torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
            return None
    except RuntimeError:
        pass
    return f"{name} has no {key} kernel"


def _tolerance(case, name):
    """TOL of the dtype, except two quantities of the training-mode reduce path that are ill-conditioned by the
    official math itself (tests/test_reduce.py and tests/test_cuda_emu_reduce.py check them the same way):
    grad_conv2_weight, a cancelling sum measured against its floor (`_cancelling_floor`), and in 16-bit the
    BatchNorm1 gradients, whose batch statistics are taken over u rounded to x's dtype, as the official 16-bit conv
    writes it (csrc/reduce/reduce.h); the float64 reference keeps u unrounded."""
    tol = TOL[case["dtype"]]
    if case["op"] == "osra_reduce" and case["shape"].get("train"):
        if name == "grad_conv2_weight":
            return max(tol, 1e-3)
        if case["dtype"] != "fp32" and name.startswith("grad_bn1_"):
            return 1e-1
    return tol


def _cancelling_floor(case, ref_grads):
    """Gradients that are ~0 by the math, so that their relative error measures rounding only: in training the
    reduce path's BatchNorm2 normalises conv2's per-channel scale away (BN(w z) = BN(z)), leaving grad_conv2_weight
    as a cancelling sum (eps alone keeps it nonzero). It is compared against 1e-3 of grad_x's norm instead."""
    if case["op"] == "osra_reduce" and case["shape"].get("train"):
        return {"conv2_weight": 1e-3 * float(ref_grads["x"].double().norm())}
    return {}


def _rel_err(actual, expected, floor=0.0):
    a, e = actual.double(), expected.double()
    if not bool(a.isfinite().all()):
        return float("nan")
    return ((a - e).norm() / e.norm().clamp_min(max(floor, 1e-30))).item()


def child(args):
    """Run cases from args.start on, one result line each; exit 3 when the CUDA context is lost."""
    if args.device == "cpu" and "triton" in args.backends:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, ROOT)
    import torch

    cases = all_cases(args)
    inject = os.environ.get("TRANSXNET_CHECK_INJECT")  # tests: "crash:<label>" or "raise:<label>"
    for index in range(args.start, len(cases)):
        case, start = cases[index], time.time()
        try:
            if inject and inject.split(":", 1)[1] == case["label"] and case["backend"] == args.backends[0]:
                if inject.startswith("crash:"):
                    os._exit(139)
                raise RuntimeError("injected failure")
            result = run_case(case, args.device)
        except Exception as exc:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
            result = dict(status="FAIL", error=" | ".join(text[:3])[:500])
        result.update(index=index, seconds=round(time.time() - start, 2))
        print(MARK + json.dumps(result), flush=True)
        if args.device == "cuda":
            try:
                torch.cuda.synchronize()
            except Exception:  # a sticky error (illegal address, ...): this process cannot run more cases
                sys.exit(3)


# ----------------------------------------------------------------------------- parent: isolation and report
def _reader(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_isolated(args, cases, deadline):
    results, start = {}, 0
    child_args = [sys.executable, os.path.abspath(__file__), "--child", "--device", args.device,
                  "--backends", ",".join(args.backends), "--dtypes", ",".join(args.dtypes), "--shapes", args.shapes]
    while start < len(cases) and time.time() < deadline - 5:
        proc = subprocess.Popen(child_args + ["--start", str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        lines, tail = queue.Queue(), []
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        current, case_started, timed_out = start, time.time(), False
        while True:
            wait = min(args.case_timeout - (time.time() - case_started), deadline - time.time())
            try:
                line = lines.get(timeout=max(wait, 0.1))
            except queue.Empty:
                timed_out = True
                proc.kill()
                break
            if line is None:
                break
            if line.startswith(MARK):
                r = json.loads(line[len(MARK):])
                results[r["index"]] = r
                current, case_started = r["index"] + 1, time.time()
            else:
                tail = (tail + [line.rstrip()])[-20:]
        proc.wait()
        if current >= len(cases):
            break
        if timed_out:
            why = "timed out" if time.time() < deadline else "stopped: the time budget ran out"
            results[current] = dict(index=current, status="FAIL" if time.time() < deadline else "NOT RUN",
                                    error=f"{why} after {time.time() - case_started:.0f} s")
        elif current not in results:
            results[current] = dict(index=current, status="FAIL",
                                    error=f"the process died (exit {proc.returncode}): " + " | ".join(tail[-3:]))
        start = current + 1  # the next process starts after the case that broke this one
    for i in range(len(cases)):
        results.setdefault(i, dict(index=i, status="NOT RUN", error="no time left"))
    return [dict(cases[i], **results[i]) for i in range(len(cases))]


def report(rows, args, seconds):
    shape_text = lambda s: " ".join(f"{k}={v}" for k, v in s.items())  # noqa: E731
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "MISSING", "NOT RUN")}
    lines = [f"# Correctness vs the float64 reference ({args.device}, {seconds:.0f} s)", "",
             f"{len(rows)} cases: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['MISSING']} missing (no "
             f"kernel on that backend yet), {counts['NOT RUN']} not run. "
             "Tolerances (relative norm error): " + ", ".join(f"{k} {v:g}" for k, v in TOL.items())
             + "; every gradient bitwise equal across two runs.", "",
             "| op | backend | dtype | case | status | max rel err (where) | s | error |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['max_err']:.1e} ({r['worst']})" if r.get("max_err") is not None else ""
        lines.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {r['label']} ({shape_text(r['shape'])}) | "
                     f"{r['status']} | {err} | {r.get('seconds', '')} | {(r.get('error') or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n", counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--backends", default=None, help="comma list (default: cuda,triton on cuda; cpu,triton on cpu)")
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    p.add_argument("--shapes", default=None, choices=sorted(SHAPES), help="default: gpu on cuda, tiny on cpu")
    p.add_argument("--out", help="markdown report (default: print)")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--time-limit", type=float, default=600, help="seconds for the whole run")
    p.add_argument("--case-timeout", type=float, default=180, help="seconds for one case (Triton compiles included)")
    p.add_argument("--in-process", action="store_true", help="no child processes (e.g. under compute-sanitizer)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.backends = (args.backends or ("cuda,triton" if args.device == "cuda" else "cpu,triton")).split(",")
    args.dtypes = args.dtypes.split(",")
    args.shapes = args.shapes or ("gpu" if args.device == "cuda" else "tiny")
    if args.child:
        return child(args)
    started = time.time()
    cases = all_cases(args)
    if args.in_process:
        if args.device == "cpu" and "triton" in args.backends:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        sys.path.insert(0, ROOT)
        rows = []
        for c in cases:
            t = time.time()
            try:
                r = run_case(c, args.device)
            except Exception as exc:
                r = dict(status="FAIL", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            rows.append(dict(c, **r, seconds=round(time.time() - t, 2)))
    else:
        rows = run_isolated(args, cases, started + args.time_limit)
    text, counts = report(rows, args, time.time() - started)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    print(text if not args.out else text.split("\n\n")[1])
    for r in rows:
        if r["status"] != "PASS":
            print(f"  {r['status']}: {r['op']} {r['backend']} {r['dtype']} {r['label']}: {r.get('error')}")
    sys.exit(0 if counts["FAIL"] == 0 and counts["NOT RUN"] == 0 else 1)


if __name__ == "__main__":
    main()
