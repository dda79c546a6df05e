"""What the emulator's test files share: when the emulator can run here, and bitwise schedule independence (the
emulator runs a launch's blocks and threads in a chosen order, so a result that depends on that order - a race, an
order-dependent reduction, a missing barrier - differs between schedules)."""
import platform

import pytest
import torch

from .build import find_cuda_include

SCHEDULES = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("vary", 2)]


def emulator_unavailable():
    """Why the emulator cannot run on this machine, or None."""
    if platform.system() != "Linux":
        return "the CUDA emulator needs Linux (mmap'ed fiber stacks)"
    if find_cuda_include() is None:
        return "the CUDA emulator needs the CUDA toolkit headers (cuda_fp16.h, nv/target); set CUDA_HOME"
    return None


_WHY = emulator_unavailable()
requires_emulator = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def assert_schedule_independent(emu_ops, run):
    """run() -> a sequence of tensors, bitwise equal under every schedule; leaves the default ("vary", 0) set."""
    results = []
    for schedule, seed in SCHEDULES:
        emu_ops.emu_configure(schedule, seed)
        results.append([t.detach().reshape(-1).view(torch.uint8) for t in run()])
    emu_ops.emu_configure("vary", 0)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
