"""The project's CUDA kernels (csrc/*/*_cuda.cu) and bindings (csrc/*/*_cuda_bind.cpp), run on the CPU through the
CUDA emulator of tests/cuda_emu (blocks in sequence, each block's threads as fibers, barriers and warp collectives
enforced, thread order varied between barriers), checked against the float64 reference; plus the emulator's
self-tests (tests/cuda_emu/selftest_*.cu), which show it catches what it claims to catch.

The ops are registered as torch.ops.transxnet_ops_emu.* for CPU tensors. Their outputs and workspaces are
allocated NaN-filled inside 4 KB guard zones (an unwritten element or an out-of-bounds write fails), and a CUDA
error the host code leaves unchecked fails the call.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transxnet_ops import reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_emu.build import build, op_schemas, rewrite_cuda_source  # noqa: E402
from cuda_emu.testing import requires_emulator  # noqa: E402

pytestmark = requires_emulator

ops = torch.ops.transxnet_ops_emu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# cudaError_t values (driver_types.h)
SUCCESS, INVALID_VALUE, INVALID_CONFIGURATION = 0, 1, 9
INVALID_RESOURCE_HANDLE, ILLEGAL_ADDRESS, LAUNCH_OUT_OF_RESOURCES = 400, 700, 701
LAUNCH_TIMEOUT, ASSERT, MISALIGNED, LAUNCH_FAILURE = 702, 710, 716, 719


def test_source_rewriting():
    """Launches, shared memory and launch bounds are rewritten; comments, strings and line numbers are kept."""
    src = """// k<<<1, 2>>>(x); in a comment
const char* s = "a<<<b>>>(c);";
template <int N> __global__ void __launch_bounds__(128, 2) k(float* p) {
  __shared__ float a[N][4], b[N + 1];
  extern __shared__ __align__(16) unsigned char raw[];
}
void run(float* p, cudaStream_t st) {
  k<std::integral_constant<int, (3 > 2)>::value><<<dim3(1, 2),
      128, 0, st>>>(p);
}
"""
    out = rewrite_cuda_source(src, "x.cu")
    assert out.count("\n") == src.count("\n")
    assert out.splitlines()[:2] == src.splitlines()[:2]
    assert ('::txn_emu::launch("k<std::integral_constant<int, (3 > 2)>::value>", __FILE__, __LINE__, '
            'k<std::integral_constant<int, (3 > 2)>::value>, ::txn_emu::make_config(dim3(1, 2),\n      128, 0, st), p)'
            in out)
    assert "{ ::txn_emu::check_launch_bounds(__FILE__, __LINE__, 128, 2);" in out.splitlines()[2]
    assert "static float a[N][4], b[N + 1]; [[maybe_unused]] const bool" in out
    assert "::txn_emu::shared_touch({{&a, sizeof(a)}, {&b, sizeof(b)}})" in out
    assert "unsigned char* raw = ::txn_emu::dynamic_smem<unsigned char>();" in out


def test_emulated_ops_have_the_schemas_of_ops_cpp(emu):
    from transxnet_ops import _ext

    schemas = op_schemas(Path(__file__).resolve().parents[1] / "csrc" / "ops.cpp")
    assert len(schemas) >= 6
    for schema in schemas:
        name = schema.split("(")[0]
        emulated = str(getattr(ops, name).default._schema)
        assert emulated == "transxnet_ops_emu::" + schema
        if _ext.has_cpu_kernels():  # the real extension: identical up to the namespace
            real = str(getattr(torch.ops.transxnet_ops, name).default._schema)
            assert emulated.replace("transxnet_ops_emu::", "transxnet_ops::") == real


@pytest.fixture(scope="session")
def emu():
    """Compiles (once per checkout, cached under build/cuda_emu/) and loads the emulator extension."""
    return build()


@pytest.fixture(autouse=True)
def _default_schedule(emu):
    ops.emu_configure("vary", 0)
    yield
    ops.emu_configure("vary", 0)


def selftest(name, buffers, args=()):
    return ops.emu_selftest(name, list(buffers), list(args))


def err(actual, expected):
    """Relative norm error in float64; the max abs error where the expected value is ~0. NaN/inf never passes."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "NaN/inf in the result (an element the kernel never wrote?)"
    if expected.norm() < 1e-6:
        return (actual - expected).abs().max().item()
    return ((actual - expected).norm() / expected.norm()).item()


def bits(t):
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()]).clone()


# ================================================================================================ emulator self-tests
def test_build_registers_the_csrc_cuda_bindings(emu):
    assert emu.kernel_sources, "no csrc/*/*_cuda.cu found"
    assert set(ops.emu_ops()) == set(emu.families)
    for family, why in emu.missing.items():
        assert "no CUDA implementation" in why, (family, why)
    before = ops.emu_stats()[0]
    selftest("block_vote", [torch.ones(64), torch.zeros(3, dtype=torch.int32)], [64])
    assert ops.emu_stats()[0] == before + 1  # launches are counted: kernels really run


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle", "vary"])
def test_barrier_orders_shared_memory(emu, schedule):
    ops.emu_configure(schedule, 3)
    n, blocks = 96, 3
    x = torch.randn(blocks, n)
    out = torch.empty(blocks, n)
    assert selftest("neighbour", [x, out], [n, blocks, 1]) == SUCCESS
    t = torch.arange(n)
    torch.testing.assert_close(out, x[:, n - 1 - t] + 2 * x[:, (t + 1) % n], rtol=0, atol=0)


def test_missing_barrier_changes_results_across_schedules(emu):
    n, blocks = 64, 2
    x = torch.randn(blocks, n)
    results = {}
    for schedule in ["forward", "reverse", "shuffle"]:
        ops.emu_configure(schedule, 1)
        out = torch.empty(blocks, n)
        assert selftest("neighbour", [x, out], [n, blocks, 0]) == SUCCESS
        results[schedule] = bits(out)
    assert not torch.equal(results["forward"], results["reverse"])
    assert not torch.equal(results["forward"], results["shuffle"])


def test_block_collectives(emu):
    out = torch.zeros(3, dtype=torch.int32)
    x = torch.randn(200)
    assert selftest("block_vote", [x, out], [200]) == SUCCESS
    positive = int((x > 0).sum())
    assert out.tolist() == [positive, int(positive == 200), int(positive > 0)]


def _shuffle_reference(v, src):
    lane = np.arange(32)
    rows = [[] for _ in range(6)]
    for w in range(len(v) // 32):
        x0 = v[32 * w:32 * w + 32].astype(np.float32)
        x = x0.copy()
        for o in (16, 8, 4, 2, 1):
            x = (x + x[lane ^ o]).astype(np.float32)
        d = x0.copy()
        for o in (16, 8, 4, 2, 1):
            d = (d + np.where(lane + o < 32, d[np.minimum(lane + o, 31)], d)).astype(np.float32)
        s = x0.copy()
        for o in (1, 2, 4, 8, 16):
            s = np.where(lane >= o, s + s[np.maximum(lane - o, 0)], s).astype(np.float32)
        group = lane & ~7
        for r, val in enumerate([x, d, s, np.full(32, x0[src % 32]), x0[(lane * 3 + 1) % 32],
                                 x0[lane ^ 4] + np.float32(10) * x0[group + 1]]):
            rows[r].append(val.astype(np.float32))
    return np.stack([np.concatenate(r) for r in rows])


@pytest.mark.parametrize("src", [0, 7, 45])
def test_warp_shuffles(emu, src):
    v = torch.randn(96)
    out = torch.empty(6, 96)
    assert selftest("shuffle", [v, out], [96, src]) == SUCCESS
    np.testing.assert_array_equal(out[:5].numpy(), _shuffle_reference(v.numpy(), src)[:5])
    np.testing.assert_allclose(out[5].numpy(), _shuffle_reference(v.numpy(), src)[5], rtol=1e-6)


def test_warp_votes(emu):
    v = torch.randn(64)
    v[32:] = v[32:].abs()  # second warp: all positive
    out = torch.empty(64, 3, dtype=torch.int32)
    assert selftest("warp_vote", [v, out], [64]) == SUCCESS
    for w in range(2):
        p = (v[32 * w:32 * w + 32] > 0).tolist()
        ballot = sum(1 << i for i, b in enumerate(p) if b)
        ballot = ballot - (1 << 32) if ballot >= 1 << 31 else ballot
        assert out[32 * w:32 * w + 32].tolist() == [[ballot, int(any(p)), int(all(p))]] * 32


def test_thread_and_block_indices(emu):
    grid, block = (2, 3, 2), (4, 2, 3)
    out = torch.empty(2 * 3 * 2 * 4 * 2 * 3, 4, dtype=torch.int32)
    assert selftest("dims", [out], [*grid, *block]) == SUCCESS
    enc = lambda x, y, z: x + 100 * y + 10000 * z  # noqa: E731
    expected = [[enc(tx, ty, tz), enc(bx, by, bz), enc(*block), enc(*grid)]
                for bz in range(2) for by in range(3) for bx in range(2)
                for tz in range(3) for ty in range(2) for tx in range(4)]
    assert out.tolist() == expected


def test_dynamic_shared_memory_and_the_48kb_rule(emu):
    out = torch.empty(48 * 1024 // 4)
    assert selftest("dynamic_smem", [out], [48 * 1024, 0]) == SUCCESS
    assert torch.equal(out, torch.arange(out.numel() - 1, -1, -1, dtype=torch.float32))
    big = torch.empty(100 * 1024 // 4)
    code = selftest("dynamic_smem", [big], [48 * 1024 + 4, 0])  # above 48 KB without the attribute
    assert code == INVALID_VALUE and "cudaFuncSetAttribute" in ops.emu_error_string(code)
    assert selftest("dynamic_smem_optin", [big], [100 * 1024, 100 * 1024]) == SUCCESS
    assert torch.equal(big, torch.arange(big.numel() - 1, -1, -1, dtype=torch.float32))
    assert selftest("dynamic_smem_optin", [big], [100 * 1024 + 4, 0]) == INVALID_VALUE  # above the raised limit
    assert selftest("dynamic_smem_optin", [big], [1024, 228 * 1024]) == INVALID_VALUE  # > 227 KB: never
    raw = torch.empty(1000)
    assert selftest("extern_smem", [raw], [4000]) == SUCCESS  # `extern __shared__ float x[];` spelling
    assert torch.equal(raw, 2 * torch.arange(999, -1, -1, dtype=torch.float32))


def test_static_plus_dynamic_shared_memory_budget(emu):
    out = torch.zeros(1)
    assert selftest("static_smem_budget", [out], [0, 0]) == SUCCESS and out.item() == 10 * 1024 - 1 + 1
    assert selftest("static_smem_budget", [out], [8 * 1024, 0]) == SUCCESS  # 40 + 8 <= 48 KB
    code = selftest("static_smem_budget", [out], [9 * 1024, 0])  # 40 + 9 > 48 KB
    assert code == INVALID_VALUE and "static __shared__" in ops.emu_error_string(code)
    assert selftest("static_smem_budget", [out], [16 * 1024, 16 * 1024]) == SUCCESS  # limit raised


def test_out_of_bounds_dynamic_shared_memory_is_caught(emu):
    code = selftest("dynamic_smem_overrun", [], [1024])
    assert code == ILLEGAL_ADDRESS and "dynamic shared memory" in ops.emu_error_string(code)


@pytest.mark.parametrize("grid,block,smem,legacy_stream,expected", [
    ((1, 1, 1), (1024, 1, 1), 0, 0, SUCCESS),
    ((1, 1, 1), (1025, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (32, 33, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (1, 1, 65), 0, 0, INVALID_CONFIGURATION),
    ((0, 1, 1), (32, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 65536, 1), (32, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (32, 1, 1), 49 * 1024, 0, INVALID_VALUE),
    ((1, 1, 1), (32, 1, 1), 0, 1, INVALID_RESOURCE_HANDLE),  # not torch's current stream
])
def test_launch_validation(emu, grid, block, smem, legacy_stream, expected):
    flag = torch.zeros(1, dtype=torch.int32)
    assert selftest("launch", [flag], [*grid, *block, smem, legacy_stream]) == expected
    assert flag.item() == int(expected == SUCCESS)  # a failed launch runs nothing


def test_launch_bounds_are_enforced(emu):
    out = torch.zeros(1, dtype=torch.int32)
    assert selftest("launch_bounds", [out], [64]) == SUCCESS and out.item() == 64
    code = selftest("launch_bounds", [out], [96])
    assert code == LAUNCH_OUT_OF_RESOURCES and "__launch_bounds__(64)" in ops.emu_error_string(code)


def test_device_attributes(emu):
    out = torch.zeros(7, dtype=torch.int32)
    assert selftest("device_attributes", [out]) == SUCCESS
    assert out.tolist() == [132, 227 * 1024, 48 * 1024, 1024, 65536, 0, 48 * 1024]


def test_shared_memory_is_fresh_and_poisoned_in_every_block(emu):
    ops.emu_configure("forward", 0)  # block 0 fills the array before block 1 runs
    out = torch.zeros(2, 64)
    assert selftest("shared_poison", [out]) == SUCCESS
    assert torch.equal(out[0], torch.arange(1, 65, dtype=torch.float32))
    assert torch.isnan(out[1]).all()


def test_static_shared_memory_of_template_instantiations(emu):
    a, b = torch.zeros(64), torch.zeros(64)
    assert selftest("template_smem", [a, b]) == SUCCESS
    t32, t64 = torch.arange(32, dtype=torch.float32), torch.arange(64, dtype=torch.float32)
    assert torch.equal(a, torch.cat([(31 - t32) * 32 + 32] * 2))
    assert torch.equal(b, (63 - t64) * 64 + 64)


@pytest.mark.parametrize("kind,code,message", [
    (0, LAUNCH_FAILURE, "deadlock"),
    (1, LAUNCH_FAILURE, "divergent barrier"),
    (2, LAUNCH_FAILURE, "do not exist"),
    (3, LAUNCH_FAILURE, "divergent warp collective"),
    (4, LAUNCH_FAILURE, "deadlock"),
    (5, LAUNCH_FAILURE, "not in the mask"),
    (6, ILLEGAL_ADDRESS, "invalid memory access"),
    (7, ILLEGAL_ADDRESS, "stack overflow"),
    (8, ASSERT, "__trap"),
    (9, LAUNCH_FAILURE, "not in its mask"),
    (10, LAUNCH_TIMEOUT, "spin-wait"),
])
def test_broken_kernels_fail_instead_of_hanging(emu, kind, code, message):
    out = torch.zeros(128)
    previous_timeout = ops.emu_set_timeout(2.0)  # the watchdog (kind 10)
    try:
        got = selftest("misbehave", [out], [kind])
    finally:
        ops.emu_set_timeout(previous_timeout)
    assert got == code, ops.emu_error_string(got)
    assert message in ops.emu_error_string(got) and "misbehave_kernel" in ops.emu_error_string(got)
    ok = torch.zeros(3, dtype=torch.int32)  # the emulator is usable afterwards
    assert selftest("block_vote", [torch.ones(32), ok], [32]) == SUCCESS and ok.tolist() == [32, 1, 1]


def test_guard_zones_catch_out_of_bounds_writes(emu):
    out = ops.emu_selftest_alloc("write_n", 50, 0)
    assert torch.equal(out, torch.arange(50, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="out-of-bounds write"):
        ops.emu_selftest_alloc("write_n", 50, 1)


def test_half_and_bfloat16_conversions_round_to_nearest_even(emu):
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, 65520.0, 1e-8, 6e-8,
                            1.0009765625 + 2 ** -11, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.0e38, -1.5e-40])
    x = torch.cat([special, torch.randn(4000) * 10.0 ** torch.randint(-8, 8, (4000,)).float()])
    n = x.numel()
    h, b = torch.empty(n, dtype=torch.int16), torch.empty(n, dtype=torch.int16)
    back = torch.empty(n, 2)
    assert selftest("convert", [x, h, b, back], [n]) == SUCCESS
    finite = ~torch.isnan(x)
    assert torch.equal(h[finite], x.half().view(torch.int16)[finite])
    assert torch.equal(b[finite], x.bfloat16().view(torch.int16)[finite])
    assert torch.isnan(back[~finite]).all()
    assert torch.equal(back[finite, 0], x.half().float()[finite])
    assert torch.equal(back[finite, 1], x.bfloat16().float()[finite])


def _tf32_reference(x):
    u = x.numpy().view(np.uint32).astype(np.uint64)
    finite = (u & 0x7F800000) != 0x7F800000
    r = np.where(finite, (u + 0x1000) & 0xFFFFE000, u).astype(np.uint32)
    return torch.from_numpy(r.view(np.float32))


def test_float_to_tf32_rounds_to_nearest_ties_away(emu):
    x = torch.cat([torch.tensor([1.0 + 2 ** -11, -(1.0 + 2 ** -11), 1.0 + 3 * 2 ** -11, float("inf"), 3.4e38]),
                   torch.randn(1000)])
    out = torch.empty_like(x)
    assert selftest("tf32_round", [x, out], [x.numel()]) == SUCCESS
    assert torch.equal(out, _tf32_reference(x))
    assert out[0].item() == 1.0 + 2 ** -10 and out[1].item() == -(1.0 + 2 ** -10)


WMMA_CASES = [(dt, shape) for dt in (0, 1) for shape in (0, 1, 2)] + [(2, 3)]


@pytest.mark.parametrize("dtype_id,shape_id", WMMA_CASES)
@pytest.mark.parametrize("layouts", [0, 1, 2, 3])
def test_wmma_matches_matmul(emu, dtype_id, shape_id, layouts):
    M, N, K = {0: (16, 16, 16), 1: (32, 8, 16), 2: (8, 32, 16), 3: (16, 16, 8)}[shape_id]
    in_dtype = {0: torch.float16, 1: torch.bfloat16, 2: torch.float32}[dtype_id]
    # tile offsets must keep every fragment pointer 32-byte aligned (the WMMA API contract, checked by the
    # emulator): one tile column for 8-wide B tiles, one tile row for 8-tall A tiles
    rows, cols, depth = (M if M == 8 else 2 * M), (N if N == 8 else 3 * N), 4 * K
    a, b, c = torch.randn(rows, depth), torch.randn(depth, cols), torch.randn(rows, cols)
    a, b = a.to(in_dtype), b.to(in_dtype)
    c_col, d_col = layouts & 1, layouts >> 1
    a_store = a.t().contiguous() if layouts & 1 else a.contiguous()
    b_store = b.t().contiguous() if layouts & 2 else b.contiguous()
    c_store = c.t().contiguous() if c_col else c.contiguous()
    d = torch.full((cols, rows) if d_col else (rows, cols), float("nan"))
    code = selftest("wmma_gemm", [a_store, b_store, c_store, d], [rows, cols, depth, 0, layouts, c_col, d_col,
                                                                   dtype_id, shape_id])
    assert code == SUCCESS, ops.emu_error_string(code)
    d = d.t() if d_col else d
    if dtype_id == 2:  # the kernel rounds its tf32 inputs with __float_to_tf32
        a, b = _tf32_reference(a), _tf32_reference(b)
    expected = 0.5 * (a.double() @ b.double() + c.double())
    assert err(d, expected) < 1e-6


def test_wmma_misuse(emu):
    a, b = torch.randn(16, 16).half(), torch.randn(16, 16).half()
    d = torch.zeros(16, 16)
    # x[i] of an accumulator is not x[i] of a matrix_a fragment: layout-dependent code gives wrong values
    assert selftest("wmma_misuse", [a, b, d], [0]) == SUCCESS
    ab = (a.double() @ b.double()).half().double()
    assert err(d, ab @ b.double()) > 0.1
    for kind, code, message in [(1, LAUNCH_FAILURE, "different values"), (2, LAUNCH_FAILURE, "deadlock"),
                                (3, MISALIGNED, "aligned")]:
        got = selftest("wmma_misuse", [a, b, d], [kind])
        assert got == code and message in ops.emu_error_string(got), ops.emu_error_string(got)


@pytest.mark.skipif(os.environ.get("TXN_EMU_ASAN") != "1",
                    reason="the sanitizer run is opt-in: TXN_EMU_ASAN=1 (its own build, ~1-3 min more)")
def test_under_address_sanitizer():
    """Every op family and some self-tests run clean under ASan + UBSan, which catch the planted faults."""
    from cuda_emu import asan_check
    if asan_check.libasan() is None:
        pytest.skip("libasan not found (g++ -print-file-name=libasan.so)")
    clean = asan_check.run(asan_check.CLEAN_RUN)
    assert clean.returncode == 0 and "ASAN-CLEAN" in clean.stdout, clean.stdout[-2000:] + clean.stderr[-6000:]
    for kind, reports in asan_check.PLANTED:
        r = asan_check.run(asan_check.overread(kind))
        assert asan_check.caught(r, reports), r.stderr[-3000:]


# ================================================================================================ the project's ops
def _require(emu, family):
    if family not in emu.families:
        pytest.skip(emu.missing[family])


def _guarded_copy(t, pad=1024):
    """t's values inside a larger buffer whose margins hold a NaN bit pattern (read -> NaN output, write -> changed
    pattern); returns (view, buffer, pattern)."""
    int_dtype = {4: torch.int32, 2: torch.int16}[t.element_size()]
    pattern = {torch.float32: 0x7FC0DEAD, torch.float16: 0x7E5A, torch.bfloat16: 0x7FDA}[t.dtype]
    buf = torch.empty(t.numel() + 2 * pad, dtype=t.dtype)
    buf.view(int_dtype).fill_(pattern)
    buf[pad:pad + t.numel()] = t.flatten()
    return buf[pad:pad + t.numel()].view(t.shape), buf, pattern


def _margins_intact(buf, pattern, n, pad=1024):
    int_view = buf.view({4: torch.int32, 2: torch.int16}[buf.element_size()])
    return bool((int_view[:pad] == pattern).all() and (int_view[pad + n:] == pattern).all())


IDCONV_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 17, 33, 7), (1, 2, 5, 3, 3), (1, 2, 16, 32, 5), (2, 1, 9, 40, 31)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", IDCONV_SHAPES)
def test_idconv(emu, shape, dtype):
    _require(emu, "idconv")
    B, C, H, W, K = shape
    x, w, b = torch.randn(B, C, H, W, dtype=dtype), torch.randn(B, C, K, K, dtype=dtype), torch.randn(B, C, dtype=dtype)
    for bias in (b, None):
        y = ops.idconv(x, w, bias)
        assert y.dtype == dtype and y.shape == x.shape
        assert err(y, reference.idconv(x.double(), w.double(), None if bias is None else bias.double())) < TOL[dtype]

    gy = torch.randn_like(x)
    gx, gw, gb = ops.idconv_backward(gy, x, w)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    expected = torch.autograd.grad(reference.idconv(x64, w64, b64), (x64, w64, b64), gy.double())
    for got, exp, name in zip((gx, gw, gb), expected, ("grad_x", "grad_weight", "grad_bias")):
        assert got.dtype == dtype and got.shape == exp.shape, name
        assert err(got, exp) < TOL[dtype], name


ATTN_SHAPES = [(1, 1, 1, 1, 24), (2, 2, 37, 19, 24), (2, 1, 130, 33, 28), (1, 2, 17, 49, 64), (1, 1, 5, 3, 100)]
BIAS_KINDS = [None, "1h", "b1", "bh"]


def _attn_inputs(B, h, N, M, d, bias_kind, dtype):
    q, k, v = (torch.randn(B, h, n, d, dtype=dtype) for n in (N, M, M))
    shapes = {"1h": (1, h, N, M), "b1": (B, 1, N, M), "bh": (B, h, N, M)}
    bias = None if bias_kind is None else torch.randn(*shapes[bias_kind], dtype=dtype)
    return q, k, v, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_kind", BIAS_KINDS)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_osra_attention(emu, shape, bias_kind, dtype):
    _require(emu, "osra_attention")
    B, h, N, M, d = shape
    q, k, v, bias = _attn_inputs(B, h, N, M, d, bias_kind, dtype)
    scale = d ** -0.5
    out, lse = ops.osra_attention(q, k, v, bias, scale)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    b64 = None if bias is None else bias.double().requires_grad_()
    expected = reference.osra_attention(q64, k64, v64, b64, scale)
    assert out.dtype == dtype and err(out, expected) < TOL[dtype]
    scores = (q64 @ k64.transpose(-1, -2)) * scale + (0 if b64 is None else b64)
    assert lse.dtype == torch.float32 and err(lse, torch.logsumexp(scores, -1)) < 1e-5

    grad_out = torch.randn_like(out)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, scale, bias is not None)
    wrt = (q64, k64, v64) + (() if b64 is None else (b64,))
    expected_grads = torch.autograd.grad(expected, wrt, grad_out.double())
    for got, exp, name in zip(grads, expected_grads, ("grad_q", "grad_k", "grad_v", "grad_bias")):
        assert got.dtype == dtype and got.shape == exp.shape, name
        assert err(got, exp) < TOL[dtype], name
    if bias is None:
        assert grads[3].numel() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_osra_attention_without_bias_gradient(emu, dtype):
    _require(emu, "osra_attention")
    q, k, v, bias = _attn_inputs(2, 2, 20, 7, 24, "1h", dtype)
    out, lse = ops.osra_attention(q, k, v, bias, 0.3)
    grads = ops.osra_attention_backward(torch.randn_like(out), q, k, v, bias, out, lse, 0.3, False)
    assert grads[3].numel() == 0 and all(torch.isfinite(g).all() for g in grads[:3])


def test_osra_attention_non_contiguous_inputs(emu):
    _require(emu, "osra_attention")
    B, h, N, M, d = 2, 2, 23, 11, 24
    q = torch.randn(B, N, h, d).transpose(1, 2)
    k = torch.randn(B, M, h, d).transpose(1, 2)
    v = torch.randn(B, h, d, M).transpose(2, 3)
    bias = torch.randn(1, h, M, N).transpose(2, 3)
    out, _ = ops.osra_attention(q, k, v, bias, 0.2)
    assert err(out, reference.osra_attention(q.double(), k.double(), v.double(), bias.double(), 0.2)) < 1e-5


def test_unsupported_sizes_fail_in_the_binding(emu):
    _require(emu, "idconv")
    _require(emu, "osra_attention")
    with pytest.raises(RuntimeError, match="K <= 31"):
        ops.idconv(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 33, 33), None)
    q = torch.randn(1, 1, 4, 129)
    with pytest.raises(RuntimeError, match="head_dim <= 128"):
        ops.osra_attention(q, q, q, None, 0.1)


def _run_all(family, inputs):
    if family == "idconv":
        x, w, b, gy = inputs
        return (ops.idconv(x, w, b),) + tuple(ops.idconv_backward(gy, x, w))
    if family == "osra_attention":
        q, k, v, bias, go = inputs
        out, lse = ops.osra_attention(q, k, v, bias, 0.25)
        return (out, lse) + tuple(ops.osra_attention_backward(go, q, k, v, bias, out, lse, 0.25, True))
    x, w, b, gy, splits, ks = inputs
    return (ops.dwconv2d(x, w, b, splits, ks),) + tuple(ops.dwconv2d_backward(gy, x, w, splits, ks, True))


def _family_inputs(family, dtype):
    if family == "idconv":
        x = torch.randn(2, 3, 19, 35, dtype=dtype)
        return x, torch.randn(2, 3, 7, 7, dtype=dtype), torch.randn(2, 3, dtype=dtype), torch.randn_like(x)
    if family == "osra_attention":
        q, k, v, bias = _attn_inputs(2, 2, 133, 37, 28, "1h", dtype)
        return q, k, v, bias, torch.randn_like(q)
    splits, ks = [4, 2, 2, 2], [1, 3, 5, 7]
    x = torch.randn(2, 10, 13, 18, dtype=dtype)
    w = torch.randn(sum(c * k * k for c, k in zip(splits, ks)), dtype=dtype)
    return x, w, torch.randn(10, dtype=dtype), torch.randn_like(x), splits, ks


@pytest.mark.parametrize("family", ["idconv", "osra_attention", "dwconv2d"])
def test_bitwise_identical_under_every_schedule(emu, family):
    """No result may depend on the order threads and blocks run in (races, order-dependent reductions)."""
    _require(emu, family)
    inputs = _family_inputs(family, torch.float32)
    runs = []
    for schedule, seed in [("forward", 0), ("reverse", 0), ("shuffle", 1), ("vary", 2), ("vary", 2)]:
        ops.emu_configure(schedule, seed)
        runs.append([bits(t) for t in _run_all(family, inputs)])
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["idconv", "osra_attention", "dwconv2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inputs_are_neither_overread_nor_overwritten(emu, family, dtype):
    """Inputs sit inside NaN-patterned margins: a read past them makes NaN outputs, a write changes the margins."""
    _require(emu, family)
    inputs = list(_family_inputs(family, dtype))
    guards = []
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor):
            inputs[i], buf, pattern = _guarded_copy(t)
            guards.append((buf, pattern, t.numel()))
    for out in _run_all(family, inputs):
        assert torch.isfinite(out).all()
    for buf, pattern, n in guards:
        assert _margins_intact(buf, pattern, n)


def _dwconv_case(splits, ks, shape, dtype):
    B, H, W = shape
    C = sum(splits)
    x = torch.randn(B, C, H, W, dtype=dtype)
    w = torch.randn(sum(c * k * k for c, k in zip(splits, ks)), dtype=dtype)
    return x, w, torch.randn(C, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits,ks,shape", [
    ([4, 2, 2, 2], [1, 3, 5, 7], (2, 13, 18)),
    ([3], [7], (1, 9, 40)),
    ([2, 3], [3, 5], (2, 1, 1)),
    ([5], [3], (1, 17, 33)),
])
def test_dwconv2d(emu, splits, ks, shape, dtype):
    _require(emu, "dwconv2d")
    x, w, b = _dwconv_case(splits, ks, shape, dtype)
    for bias in (b, None):
        y = ops.dwconv2d(x, w, bias, splits, ks)
        expected = reference.dwconv2d(x.double(), w.double(), None if bias is None else bias.double(), splits, ks)
        assert y.dtype == dtype and err(y, expected) < TOL[dtype]
    gy = torch.randn_like(x)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    expected = torch.autograd.grad(reference.dwconv2d(x64, w64, b64, splits, ks), (x64, w64, b64), gy.double())
    for bias_grad in (True, False):
        grads = ops.dwconv2d_backward(gy, x, w, splits, ks, bias_grad)
        for got, exp, name in zip(grads[:2], expected[:2], ("grad_x", "grad_weight")):
            assert got.dtype == dtype and err(got, exp) < TOL[dtype], name
        if bias_grad:
            assert err(grads[2], expected[2]) < TOL[dtype]
        else:
            assert grads[2].numel() == 0
