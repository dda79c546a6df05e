import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter; this must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transxnet_ops  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_report_header(config):
    return (f"transxnet_ops backends: cpu={transxnet_ops.available_backends('cpu')} "
            f"cuda={transxnet_ops.available_backends('cuda')} (gpu present: {HAS_CUDA})"
            + (f"\nextension: {transxnet_ops.extension_load_error}" if transxnet_ops.extension_load_error else ""))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def nan_filled_empty():
    """torch.empty (also inside the kernels) returns NaN-filled memory while deterministic mode is on, so an output
    element a kernel forgets to write fails the comparison. Opt in per module:
    `pytestmark = pytest.mark.usefixtures("nan_filled_empty")`."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)
