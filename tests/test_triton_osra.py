"""Triton OSRA attention kernels (transxnet_ops/triton/osra.py) called through their launchers: every path (one-tile
forward up to SMALL_M_MAX keys, one-pass backward up to ONE_PASS_M_MAX keys and d <= ONE_PASS_D_MAX (a multiple of 4)
for 16-bit and fp64 inputs, tiled kernels otherwise), forward and every gradient against the float64 reference with
NaN-poisoned outputs and workspaces, every bias form, the tensor layouts the model passes, forced chunkings (the
dk/dv read-modify-write across query blocks, dbias over batch chunks), bitwise determinism, fp64 gradcheck, and a
compile of every launch for sm_90 with the float arguments typed fp32 and fp64 (issue 8: inductor passes fp64).
Without a GPU the kernels run in the Triton interpreter (conftest): shapes stay small."""
import os
import subprocess
import sys

import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from utils import HAS_CUDA, TOL, rel_err

DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = pytest.mark.skipif("triton" not in transxnet_ops.available_backends(DEVICE),
                                reason="the Triton backend cannot run here")

DTYPES = [torch.float64, torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])
SMALL_M_MAX, ONE_PASS_M_MAX, ONE_PASS_D_MAX = 128, 64, 28  # mirror osra's cuts (asserted below)


def _osra():
    from transxnet_ops.triton import osra
    assert (osra.SMALL_M_MAX, osra.ONE_PASS_M_MAX, osra.ONE_PASS_D_MAX) == (SMALL_M_MAX, ONE_PASS_M_MAX,
                                                                           ONE_PASS_D_MAX)
    return osra


def _bias_shape(kind, B, H, N, M):
    return {"1HNM": (1, H, N, M), "B1NM": (B, 1, N, M), "BHNM": (B, H, N, M), "11NM": (1, 1, N, M)}[kind]


def _inputs(B, H, N, M, D, dtype, bias_kind="1HNM", layout="rows"):
    """q/k/v/grad_out in the given layout: "rows" contiguous, "cols" the model's transposed views (tokens
    contiguous), "strided" neither (the launcher copies)."""
    def make(*shape):
        if layout == "cols":
            return torch.randn(*shape[:2], shape[3], shape[2], device=DEVICE, dtype=dtype).transpose(-1, -2)
        if layout == "strided":
            return torch.randn(*shape[:3], 2 * shape[3], device=DEVICE, dtype=dtype)[..., ::2]
        return torch.randn(*shape, device=DEVICE, dtype=dtype)
    q, k, v, grad_out = make(B, H, N, D), make(B, H, M, D), make(B, H, M, D), make(B, H, N, D)
    bias = None if bias_kind is None else torch.randn(*_bias_shape(bias_kind, B, H, N, M), device=DEVICE,
                                                      dtype=dtype)
    return q, k, v, bias, grad_out


def _reference(q, k, v, bias, grad_out, scale):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    out = reference.osra_attention(*leaves, scale=scale)
    out.backward(grad_out.double())
    s = leaves[0] @ leaves[1].transpose(-1, -2) * scale + (0 if bias is None else leaves[3])
    return out.detach(), torch.logsumexp(s.detach(), -1), [None if t is None else t.grad for t in leaves]


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), device=DEVICE, dtype=dtype)


def _run(q, k, v, bias, grad_out, scale, bias_grad=True, plan_edit=None):
    """Forward and backward through the launchers into NaN-filled outputs and workspaces."""
    osra = _osra()
    B, H, N, D = q.shape
    M = k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out, lse = _nan((B, H, N, D), q.dtype), _nan((B, H, N), acc)
    osra.launch_forward(q, k, v, bias, scale, out, lse)
    bias_grad = bias is not None and bias_grad
    plan = osra.backward_plan(q, k, bias, bias_grad)
    if plan_edit is not None:
        plan = plan_edit(plan)
    ws = osra.backward_workspace(plan, q, k, bias, bias_grad)
    for t in ws.values():
        t.fill_(float("nan"))
    grads = [_nan((B, H, N, D), q.dtype), _nan((B, H, M, D), q.dtype), _nan((B, H, M, D), q.dtype),
             _nan(bias.shape, bias.dtype) if bias_grad else None]
    osra.launch_backward(plan, grad_out, q, k, v, bias, out, lse, scale, *grads, ws)
    return out, lse, grads, plan


def _check(shape, dtype, bias_kind="1HNM", layout="rows", bias_grad=True, plan_edit=None, scale=None):
    B, H, N, M, D = shape
    scale = D ** -0.5 if scale is None else scale
    q, k, v, bias, grad_out = _inputs(B, H, N, M, D, dtype, bias_kind, layout)
    out, lse, grads, plan = _run(q, k, v, bias, grad_out, scale, bias_grad, plan_edit)
    ref_out, ref_lse, ref_grads = _reference(q, k, v, bias, grad_out, scale)
    tol = TOL[dtype]
    assert rel_err(out, ref_out) < tol
    assert rel_err(lse, ref_lse) < min(tol, 1e-5)
    for name, got, ref in zip(("q", "k", "v", "bias"), grads, ref_grads):
        if got is None:
            continue
        assert got.shape == ref.shape, name
        if ref.abs().max() == 0:  # M = 1: softmax is constant, grad_q and grad_bias vanish; allow rounding noise
            assert got.isfinite().all() and got.double().abs().max() < tol, name
        else:
            assert rel_err(got, ref) < tol, name
    return plan


# (B, H, N, M, D): TransXNet-like d (24, 28), d = 1 and 8 (padded to 16), 64, 128, 72 (fp32: head-dim chunks of 64,
# the last ragged); N = 1, M = 1; sizes that are no multiple of any block; several query blocks (N > 64); M = 49
# (the model), M = 128 (the largest one-tile key set), M = 130 and 200 (tiled path: 3-4 key blocks, ragged).
SHAPES = [(2, 1, 70, 49, 24), (1, 2, 33, 49, 28), (2, 2, 1, 5, 8), (1, 1, 9, 1, 1), (1, 2, 17, 128, 16),
          (1, 1, 20, 31, 64), (1, 1, 5, 7, 128), (1, 2, 19, 70, 72), (2, 1, 70, 130, 24), (1, 2, 9, 200, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_and_gradients_match_reference(shape, dtype):
    """With 132 SMs assumed, these small shapes get the most programs: one query block per program and, on the
    tiled path, dk/dv split over every query block (partials)."""
    plan = _check(shape, dtype)
    assert plan.one_pass == (shape[3] <= ONE_PASS_M_MAX and shape[4] <= ONE_PASS_D_MAX and shape[4] % 4 == 0
                             and dtype != torch.float32)


# fp64 and fp16 take the one-pass backward at M <= 64 (fp32 the tiled kernels, for registers): both are covered.
PATHS = [(21, torch.float64), (21, torch.float32), (150, torch.float32)]
PATH_IDS = ["one-pass", "tiled-fp32", "tiled"]


@pytest.mark.parametrize("bias_kind", ["1HNM", "B1NM", "BHNM", "11NM", None])
@pytest.mark.parametrize("M,dtype", PATHS, ids=PATH_IDS)
def test_every_bias_form(bias_kind, M, dtype):
    """grad_bias summed over the bias's broadcast batch/head dims, on every path."""
    _check((3, 2, 19, M, 16), dtype, bias_kind)


@pytest.mark.parametrize("M,dtype", PATHS, ids=PATH_IDS)
def test_bias_without_grad(M, dtype):
    _check((2, 2, 19, M, 16), dtype, "1HNM", bias_grad=False)


@pytest.mark.parametrize("layout", ["cols", "strided"])
@pytest.mark.parametrize("M,dtype", PATHS, ids=PATH_IDS)
def test_layouts(layout, M, dtype):
    """cols: q/k/v/grad_out as the model passes them (transposed views, read in place); strided: copied."""
    _check((2, 2, 37, M, 24), dtype, "1HNM", layout)


@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_fp16_one_pass_at_d24(layout):
    """fp16 at d = 24 runs the one pass pipelined (rows) or on 32-query steps (cols: several query blocks, dk/dv
    partials): the register choices of the sm_90 study."""
    plan = _check((3, 2, 70, 49, 24), torch.float16, "1HNM", layout)
    assert plan.one_pass and plan.cfg["BLOCK_N"] == (32 if layout == "cols" else 64)
    assert not plan.kv_direct


def test_expanded_grad_out():
    """out.sum().backward() hands the backward a stride-0 grad_out."""
    q, k, v, bias, _ = _inputs(2, 2, 12, 7, 16, torch.float32)
    grad_out = torch.ones(1, device=DEVICE).expand(2, 2, 12, 16)
    _, _, grads, _ = _run(q, k, v, bias, grad_out, 0.25)
    _, _, ref_grads = _reference(q, k, v, bias, grad_out, 0.25)
    for got, ref in zip(grads, ref_grads):
        assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("query_chunk,batch_chunk", [(2, 2), (3, 1), (1, 3), (8, 8)])
@pytest.mark.parametrize("bias_kind", ["1HNM", "BHNM"])
def test_forced_chunks_small_path(query_chunk, batch_chunk, bias_kind):
    """Several query blocks per program (dk/dv read-modify-written in the partial slice, ragged last chunk) and
    several batches per program (dbias summed in registers, ragged last chunk)."""
    osra = _osra()

    def edit(plan):
        B, N = 5, 200
        return plan._replace(query_chunk=query_chunk, batch_chunk=batch_chunk, kv_direct=False,
                             n_query_chunks=-(-(-(-N // plan.cfg["BLOCK_N"])) // query_chunk),
                             n_batch_chunks=-(-B // batch_chunk))
    plan = _check((5, 2, 200, 11, 16), torch.float64, bias_kind, plan_edit=edit)
    assert plan.one_pass and osra.ONE_PASS_M_MAX >= 11


def test_chunking_from_the_cost_model(monkeypatch):
    """With few SMs the model picks big chunks: the real plans take the multi-block and multi-batch branches."""
    osra = _osra()
    monkeypatch.setattr(osra, "_num_sms", lambda device: 1)
    plan = _check((5, 1, 200, 11, 16), torch.float16, "1HNM")
    assert plan.query_chunk > 1 and plan.batch_chunk > 1 and not plan.kv_direct
    plan = _check((5, 1, 150, 140, 16), torch.float32, "1HNM")
    assert not plan.one_pass and plan.batch_chunk > 1


@pytest.mark.parametrize("M,dtype", [(49, torch.float16), (49, torch.float32), (150, torch.float32)],
                         ids=["one-pass", "tiled-fp32", "tiled"])
def test_bitwise_deterministic(monkeypatch, M, dtype):
    osra = _osra()
    monkeypatch.setattr(osra, "_num_sms", lambda device: 2)  # several partials per sum
    q, k, v, bias, grad_out = _inputs(3, 2, 70, M, 24, dtype)
    first = _run(q, k, v, bias, grad_out, 0.3)[2]
    for _ in range(2):
        again = _run(q, k, v, bias, grad_out, 0.3)[2]
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_empty_and_degenerate_sizes():
    fwd = torch.ops.transxnet_ops.osra_attention_triton
    bwd = torch.ops.transxnet_ops.osra_attention_backward_triton
    for B, H, N, M, D in [(0, 2, 5, 3, 8), (2, 2, 0, 3, 8), (2, 2, 5, 0, 8), (2, 1, 5, 3, 0)]:
        q, k, v, bias, grad_out = _inputs(B, H, N, M, D, torch.float32)
        out, lse = fwd(q, k, v, bias, 0.5)
        ref = reference.osra_attention(q, k, v, bias, 0.5)
        assert out.shape == ref.shape and torch.equal(out, ref.to(out.dtype))
        grads = bwd(grad_out, q, k, v, bias, out, lse, 0.5, True)
        for g, like in zip(grads, (q, k, v, bias)):
            assert g.shape == like.shape and not g.isnan().any()
        if M == 0 or N == 0 or B == 0:
            assert all(g.abs().sum() == 0 for g in grads)


def test_head_dim_limit_is_a_clear_error():
    q = torch.randn(1, 1, 2, 300, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim must be <= 256"):
        torch.ops.transxnet_ops.osra_attention_triton(q, q, q, None, 0.1)


@pytest.mark.parametrize("M", [5, 130], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("bias_kind", ["1HNM", "B1NM"])
def test_gradcheck_float64(M, bias_kind):
    """Fast mode (random projections of the Jacobian): full mode costs one interpreted launch per input and output
    element (minutes); tests/test_osra.py runs the full mode on a tiny one-tile case."""
    B, H, N, D = 2, 2, 6, 4
    make = lambda *s: torch.randn(*s, device=DEVICE, dtype=torch.float64, requires_grad=True)  # noqa: E731
    q, k, v, bias = make(B, H, N, D), make(B, H, M, D), make(B, H, M, D), make(*_bias_shape(bias_kind, B, H, N, M))
    fn = lambda *a: transxnet_ops.osra_attention(*a, scale=0.7, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, bias), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=True)


# ---------------------------------------------------------------------------------------------------- sm_90 compile
COMPILE_LAUNCHES = r'''
import re, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from transxnet_ops.triton import osra
from transxnet_ops.triton._register import recording

TT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def launches(B, H, N, M, D, dtype, bias_shape, cols):
    mk = lambda *s: torch.empty(*s, device="meta", dtype=dtype)
    mkc = (lambda b, h, r, c: mk(b, h, c, r).transpose(-1, -2)) if cols else mk
    q, k, v = mkc(B, H, N, D), mkc(B, H, M, D), mkc(B, H, M, D)
    bias = mk(*bias_shape) if bias_shape else None
    lse = torch.empty(B, H, N, device="meta")
    with recording() as rec:
        out = mk(B, H, N, D)
        osra.launch_forward(q, k, v, bias, D ** -0.5, out, lse)
        plan = osra.backward_plan(q, k, bias, bias is not None)
        ws = osra.backward_workspace(plan, q, k, bias, bias is not None)
        osra.launch_backward(plan, mkc(B, H, N, D), q, k, v, bias, out, lse, D ** -0.5, mk(B, H, N, D),
                             mk(B, H, M, D), mk(B, H, M, D), None if bias is None else mk(*bias_shape), ws)
    return rec


def compile_launch(kernel, args, kwargs, float_type):
    kwargs = dict(kwargs)
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
    sig, constexprs = {}, {}
    for i, (name, a) in enumerate(zip(kernel.arg_names, list(args) + [None] * len(kwargs))):
        if name in kwargs:
            sig[name], constexprs[(i,)] = "constexpr", kwargs[name]
        elif isinstance(a, torch.Tensor):
            sig[name] = "*" + TT[a.dtype]
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int):
            sig[name] = "i32" if -2**31 <= a < 2**31 else "i64"
        elif isinstance(a, float):
            sig[name] = float_type  # what inductor passes for a Python float: fp64
        else:
            raise TypeError(f"{kernel.fn.__name__}.{name}: {type(a)}")
    return triton.compile(ASTSource(kernel, sig, constexprs), target=GPUTarget("cuda", 90, 32), options=options)


failures, seen = 0, set()
CASES = [((4, 2, 200, 49, 24), torch.bfloat16, (1, 2, 200, 49), False),   # one pass, several query blocks
         ((4, 1, 200, 49, 24), torch.bfloat16, (1, 1, 200, 49), True),    # one pass, the model's layout
         ((4, 2, 200, 49, 24), torch.float32, (4, 1, 200, 49), True),     # fp32 (tf32x3), per-batch bias
         ((4, 2, 40, 49, 28), torch.float16, None, False),                # one query block: dk/dv direct
         ((2, 2, 300, 200, 64), torch.bfloat16, (1, 2, 300, 200), False),  # tiled path
         ((2, 2, 300, 200, 64), torch.float32, (2, 2, 300, 200), True),
         ((2, 2, 300, 200, 96), torch.float32, (1, 2, 300, 200), False)]  # fp32 head-dim chunks (SPLIT_D)
for shape, dtype, bias_shape, cols in CASES:
    for kernel, grid, args, kwargs in launches(*shape, dtype, bias_shape, cols):
        for float_type in ("fp32", "fp64"):
            tag = f"{kernel.fn.__name__} {TT[dtype]} {'cols' if cols else 'rows'} scale:{float_type}"
            try:
                ptx = compile_launch(kernel, args, kwargs, float_type).asm["ptx"]
            except Exception as exc:
                failures += 1
                print(f"FAIL {tag}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            mma = sorted(set(re.findall(r"(wgmma\.mma_async\.\S+?|mma\.sync\.aligned\.\S+?)\s", ptx)))
            has_dot = kernel.fn.__name__ != "_sum_slots"
            if has_dot and not mma:
                failures += 1
                print(f"FAIL {tag}: no tensor-core instruction in the PTX")
                continue
            print(f"ok   {tag} {' '.join(m.split('.')[0] + '.' + '.'.join(m.split('.')[-3:]) for m in mma)}")
sys.exit(1 if failures else 0)
'''


def test_every_launch_compiles_for_sm90_with_fp32_and_fp64_scalars():
    """Every kernel as launched (recorded on meta tensors), compiled for sm_90 with the float arguments typed as
    Python floats arrive (fp32) and as inductor passes them (fp64); the dots must become tensor-core ops (wgmma or
    mma) for bf16, fp16 and fp32 (tf32x3) inputs. A fresh process: the interpreter is fixed at import."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", COMPILE_LAUNCHES], env=dict(os.environ, TRITON_INTERPRET="0"),
                         cwd=root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    for kernel in ("_attn_fwd_small", "_attn_bwd_small", "_sum_slots", "_attn_fwd_tiled", "_attn_bwd_dq_tiled",
                   "_attn_bwd_dkdv_tiled", "_attn_bwd_dbias_tiled"):
        for float_type in ("fp32", "fp64"):
            assert f"ok   {kernel} " in run.stdout and f"scale:{float_type}" in run.stdout, (kernel, run.stdout)
    assert ".tf32" in run.stdout and ".bf16" in run.stdout, run.stdout
