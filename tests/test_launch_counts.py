"""How many kernels one IDConv2d and one OSRA call launch: the official modules vs the fused ones.

Counted on CPU with torch.profiler: the operator calls made by the module (top-level aten / transxnet_ops ops,
not the ops they call internally), leaving out calls that launch nothing on a GPU (views, allocations, no-op
`contiguous` / `to` / `reshape`). With the Triton backend (the interpreter here) each Triton op counts its kernel
launches instead of 1, which is what a GPU runs; on a GPU an aten op is one kernel or a few (cuDNN, cuBLAS).

    python tests/test_launch_counts.py            # the table for the transxnet_ops on sys.path
    PYTHONPATH=<other checkout> python tests/test_launch_counts.py   # e.g. the commit before the fused paths
"""
import contextlib
import functools
import os
import sys

import pytest
import torch

if __name__ == "__main__":
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after PYTHONPATH: it wins

import transxnet_ops  # noqa: E402
from official_reference import official_like  # noqa: E402
from transxnet_ops import IDConv2d, OSRA, pointwise  # noqa: E402

# launch nothing on a GPU
_FREE = {"aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::as_strided", "aten::t", "aten::transpose",
         "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::slice", "aten::select",
         "aten::chunk", "aten::split", "aten::unbind", "aten::narrow", "aten::detach", "aten::alias",
         "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::lift_fresh", "aten::resolve_conj",
         "aten::resolve_neg", "aten::is_same_size", "aten::result_type", "aten::size", "aten::stride",
         "aten::sym_size", "aten::sym_stride", "aten::numel", "aten::dim", "aten::item", "aten::_local_scalar_dense",
         "aten::_has_compatible_shallow_copy_type", "aten::set_"}
# launch a copy only when they copy (a child copy op shows it)
_MAYBE = {"aten::reshape", "aten::contiguous", "aten::to", "aten::flatten", "aten::type_as", "aten::expand_as"}
_COPIES = ("aten::copy_", "aten::clone", "aten::_to_copy")


def _is_op(name):
    return name.startswith("aten::") or name.startswith("transxnet_ops::")


def _has_descendant(event, names):
    return any(c.name in names or _has_descendant(c, names) for c in event.cpu_children)


def _top_level_ops(events):
    for e in events:
        parent = e.cpu_parent
        while parent is not None and not _is_op(parent.name):
            parent = parent.cpu_parent
        if _is_op(e.name) and parent is None:
            yield e


@contextlib.contextmanager
def _counting_triton_launches():
    """Count every Triton kernel launch (the launchers call `launch(kernel)[grid](...)` of their module)."""
    counts = {}
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("transxnet_ops.triton.") and callable(getattr(module, "launch", None)):
            original = module.launch

            def counted(kernel, _original=original):
                name = getattr(getattr(kernel, "fn", None), "__name__", str(kernel))
                counts[name] = counts.get(name, 0) + 1
                return _original(kernel)

            module.launch = counted
            patched.append((module, original))
    try:
        yield counts
    finally:
        for module, original in patched:
            module.launch = original


def count_launches(fn):
    """(kernel launches, {op name: calls}) of fn(): GPU-launching top-level ops, Triton ops as their launches."""
    with _counting_triton_launches() as triton_launches, \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = {}
    for e in _top_level_ops(prof.events()):
        if e.name in _FREE or e.name.endswith("_triton"):  # Triton ops: their launches are counted instead
            continue
        if e.name in _MAYBE and not _has_descendant(e, _COPIES):
            continue
        ops[e.name] = ops.get(e.name, 0) + 1
    for kernel, n in triton_launches.items():
        ops["triton:" + kernel] = n
    return sum(ops.values()), ops


# ------------------------------------------------------------------------------------------------ the cases
def _randomized(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def idconv_case(backend, small=False):
    """TransXNet-T stage 1's IDConv (dim 48 -> 24 channels, K 7, G 2) at a small spatial size; `small`: 8 channels
    (the counts depend on neither; the Triton interpreter's time does)."""
    C = 8 if small else 24
    return _randomized(IDConv2d(C, kernel_size=7, num_groups=2, backend=backend)), (torch.randn(2, C, 9, 8),)


def osra_case(backend, sr_ratio, small=False):
    """TransXNet-T's OSRA: stage 1 (24 channels, sr 8, 1 head) or stage 4 (224 channels, sr 1, 8 heads), at a
    small spatial size; `small`: 4 / 16 channels."""
    dim, heads = (24, 1) if sr_ratio > 1 else (224, 8)
    if small:
        dim = 4 if sr_ratio > 1 else 16
    side = 16 if sr_ratio > 1 else 4
    m = _randomized(OSRA(dim, num_heads=heads, sr_ratio=sr_ratio, backend=backend))
    M = (-(-side // sr_ratio)) ** 2
    return m, (torch.randn(2, dim, side, side), torch.randn(1, heads, side * side, M))


@contextlib.contextmanager
def gpu_pointwise_path():
    """Count what a GPU runs: there the 1x1 convs stay convolutions (cuDNN, one kernel each); on CPU the narrow ones
    run as batched matmuls (transxnet_ops.pointwise.matmul_pays), a few more calls that are each much cheaper."""
    original = pointwise.matmul_pays
    pointwise.matmul_pays = lambda *args: False
    try:
        yield
    finally:
        pointwise.matmul_pays = original


def run_mode(module, inputs, mode):
    """eval forward (no grad) | train forward | train forward + backward, after a warm-up call (caches), with the
    1x1 convolutions on their GPU path."""
    with gpu_pointwise_path():
        return _run_mode(module, inputs, mode)


def _run_mode(module, inputs, mode):
    with torch.no_grad():
        module.eval()(*inputs)
    module.train(mode != "eval fwd")
    if mode == "eval fwd":
        with torch.no_grad():
            return count_launches(lambda: module(*inputs))
    if mode == "train fwd":
        return count_launches(lambda: module(*inputs))
    leaves = [inputs[0].clone().requires_grad_()] + list(inputs[1:])
    return count_launches(lambda: module(*leaves).sum().backward())


MODES = ["eval fwd", "train fwd", "train fwd+bwd"]
CASES = {"IDConv2d T1": idconv_case, "OSRA T1 (sr 8)": lambda b, small=False: osra_case(b, 8, small),
         "OSRA T4 (sr 1)": lambda b, small=False: osra_case(b, 1, small)}


def table(backends):
    rows = []
    for case, make in CASES.items():
        for mode in MODES:
            fused, inputs = make(backends[0])
            row = [case, mode, run_mode(official_like(fused), inputs, mode)[0]]
            for backend in backends:
                fused, inputs = make(backend)
                try:
                    row.append(run_mode(fused, inputs, mode)[0])
                except (AttributeError, RuntimeError) as exc:  # e.g. an older checkout without some kernel
                    row.append(f"n/a ({type(exc).__name__})")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ tests
FUSED = [b for b in transxnet_ops.available_backends("cpu") if b != "reference"]


@functools.lru_cache(maxsize=None)
def counts(case, backend, mode):
    """((official total, official ops), (fused total, fused ops)), measured once per session."""
    fused, inputs = CASES[case](backend, small=True)
    return run_mode(official_like(fused), inputs, mode), run_mode(fused, inputs, mode)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_modules_launch_fewer_kernels(backend, mode, case):
    (official, _), (total, ops) = counts(case, backend, mode)
    assert total < official, ops


@pytest.mark.parametrize("backend", FUSED)
def test_reduce_path_kernel_counts(backend):
    """The OSRA reduce path: one kernel in eval, three in training forward, four in training backward
    (Triton; the C++ op is one call each way)."""
    expected = {"eval fwd": 1, "train fwd": 3, "train fwd+bwd": 3 + 4} if backend == "triton" else \
        {"eval fwd": 1, "train fwd": 1, "train fwd+bwd": 2}
    for mode, n in expected.items():
        ops = counts("OSRA T1 (sr 8)", backend, mode)[1][1]
        assert sum(v for k, v in ops.items() if "reduce" in k) == n, (mode, ops)
        assert not any("batch_norm" in k or "gelu" in k for k in ops), ops  # nothing unfused is left


@pytest.mark.parametrize("backend", FUSED)
def test_idconv_weight_generation_is_one_kernel_each_way(backend):
    for mode, n in {"eval fwd": 1, "train fwd": 1, "train fwd+bwd": 2}.items():
        ops = counts("IDConv2d T1", backend, mode)[1][1]
        assert sum(v for k, v in ops.items() if "idconv_weights" in k) == n, (mode, ops)
        assert not any("softmax" in k for k in ops), ops


if __name__ == "__main__":
    names = FUSED or ["reference"]
    print(f"transxnet_ops from {os.path.dirname(transxnet_ops.__file__)}; launches per call (CPU profiler count)")
    print("| module | mode | official | " + " | ".join(f"fused ({b})" for b in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for row in table(names):
        print("| " + " | ".join(map(str, row)) + " |")
