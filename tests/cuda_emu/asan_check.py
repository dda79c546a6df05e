"""The emulated CUDA ops under AddressSanitizer + UBSan (alignment, bounds): catches out-of-bounds *reads*, accesses
past static shared arrays and thread stacks, misaligned vector loads (x86 tolerates them, a GPU faults) and
indices past fixed-size arrays (register arrays, shared tiles) - none of which the normal emulator build sees.

    python tests/cuda_emu/asan_check.py           # exit status 0: clean, and ASan does catch planted over-reads

Python is not instrumented, so each check runs in a subprocess with libasan preloaded; the emulator extension is
built a second time with the sanitizers (variant "asan", its own cache folder under build/cuda_emu/).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASAN_FLAGS = ("-fsanitize=address,alignment,bounds", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
# the planted faults of selftest "overread" and what a sanitizer report says about each (any of)
PLANTED = [(0, ("heap-buffer-overflow",)), (1, ("global-buffer-overflow", "out of bounds for type")),
           (2, ("misaligned address",)), (3, ("out of bounds for type",))]


def caught(result: subprocess.CompletedProcess, reports: tuple[str, ...]) -> bool:
    return result.returncode != 0 and any(r in result.stderr for r in reports) and "NOT-CAUGHT" not in result.stdout

PRELUDE = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / 'tests')!r})
from cuda_emu.build import build
lib = build(variant="asan", extra_cflags={ASAN_FLAGS!r})
ops = torch.ops.transxnet_ops_emu
"""

# Every op family with small odd shapes, forward and backward, and a few self-tests (fibers, WMMA, shared memory).
CLEAN_RUN = """
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    if "idconv" in lib.families:
        x, w = torch.randn(2, 3, 17, 33, dtype=dtype), torch.randn(2, 3, 7, 7, dtype=dtype)
        y = ops.idconv(x, w, torch.randn(2, 3, dtype=dtype))
        ops.idconv_backward(torch.randn_like(x), x, w)
    if "osra_attention" in lib.families:
        for (B, h, N, M, d) in [(2, 2, 37, 19, 24), (1, 1, 130, 33, 64)]:
            q, k, v = (torch.randn(B, h, n, d, dtype=dtype) for n in (N, M, M))
            bias = torch.randn(1, h, N, M, dtype=dtype)
            out, lse = ops.osra_attention(q, k, v, bias, d ** -0.5)
            ops.osra_attention_backward(torch.randn_like(out), q, k, v, bias, out, lse, d ** -0.5, True)
    if "dwconv2d" in lib.families:
        splits, ks = [4, 2, 2, 2], [1, 3, 5, 7]
        x = torch.randn(2, 10, 13, 18, dtype=dtype)
        w = torch.randn(sum(c * k * k for c, k in zip(splits, ks)), dtype=dtype)
        ops.dwconv2d(x, w, torch.randn(10, dtype=dtype), splits, ks)
        ops.dwconv2d_backward(torch.randn_like(x), x, w, splits, ks, True)
assert ops.emu_selftest("neighbour", [torch.randn(2, 64), torch.empty(2, 64)], [64, 2, 1]) == 0
assert ops.emu_selftest("shuffle", [torch.randn(96), torch.empty(6, 96)], [96, 5]) == 0
assert ops.emu_selftest("dynamic_smem", [torch.empty(4096)], [16384, 0]) == 0
a, b, c, d = torch.randn(32, 64).half(), torch.randn(64, 48).half(), torch.randn(32, 48), torch.empty(32, 48)
assert ops.emu_selftest("wmma_gemm", [a, b, c, d], [32, 48, 64, 0, 0, 0, 0, 0, 0]) == 0
print("ASAN-CLEAN", lib.families)
"""


def overread(kind: int) -> str:
    return f"""
ops.emu_selftest("overread", [torch.randn(100), torch.empty(1)], [100, {kind}])
print("NOT-CAUGHT")
"""


def _gcc_lib(name: str) -> str | None:
    try:
        path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


def libasan() -> str | None:
    return _gcc_lib("libasan.so")


def run(code: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # libstdc++ too: ASan's __cxa_throw interceptor needs it loaded before any library that throws
    preload = " ".join(filter(None, [libasan(), _gcc_lib("libstdc++.so")]))
    env = dict(os.environ, LD_PRELOAD=preload,
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:detect_stack_use_after_return=0")
    env.setdefault("PYTHONPATH", str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE + code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(ROOT))


def main() -> int:
    if libasan() is None:
        print("libasan not found (g++ -print-file-name=libasan.so)")
        return 2
    clean = run(CLEAN_RUN)
    ok = clean.returncode == 0 and "ASAN-CLEAN" in clean.stdout
    print("clean run:", "ok" if ok else "FAILED\n" + clean.stdout[-3000:] + clean.stderr[-6000:])
    for kind, reports in PLANTED:
        r = run(overread(kind))
        hit = caught(r, reports)
        print(f"planted fault {kind}:", "caught" if hit else "NOT caught\n" + r.stderr[-3000:])
        ok = ok and hit
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
