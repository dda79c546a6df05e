"""torch.compile(fullgraph=True) traces every op and backend without graph breaks, forward and backward."""
import pytest
import torch

import transxnet_ops
from utils import HAS_CUDA, backend_device_pairs, check_compiled, rel_err

PAIRS = backend_device_pairs()


def idconv_inputs(device, dtype=torch.float32):
    return [torch.randn(2, 3, 6, 7, device=device, dtype=dtype, requires_grad=True),
            torch.randn(2, 3, 3, 3, device=device, dtype=dtype, requires_grad=True),
            torch.randn(2, 3, device=device, dtype=dtype, requires_grad=True)]


def attn_inputs(device, dtype=torch.float32):
    return [torch.randn(2, 2, 9, 16, device=device, dtype=dtype, requires_grad=True),
            torch.randn(2, 2, 5, 16, device=device, dtype=dtype, requires_grad=True),
            torch.randn(2, 2, 5, 16, device=device, dtype=dtype, requires_grad=True),
            torch.randn(1, 2, 9, 5, device=device, dtype=dtype, requires_grad=True)]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_idconv_fullgraph(backend, device):
    fn = lambda x, w, b: torch.nn.functional.gelu(transxnet_ops.idconv(x, w, b, backend=backend))  # noqa: E731
    check_compiled(fn, idconv_inputs(device), "aot_eager")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_osra_attention_fullgraph(backend, device):
    fn = lambda q, k, v, b: transxnet_ops.osra_attention(q, k, v, b, backend=backend) * 2  # noqa: E731
    check_compiled(fn, attn_inputs(device), "aot_eager")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_multiscale_dwconv2d_fullgraph(backend, device):
    x = torch.randn(2, 7, 6, 5, device=device, requires_grad=True)
    ws = [torch.randn(c, 1, k, k, device=device, requires_grad=True) for c, k in [(3, 1), (2, 3), (2, 5)]]
    bs = [torch.randn(c, device=device, requires_grad=True) for c in (3, 2, 2)]
    fn = lambda x, *p: transxnet_ops.multiscale_dwconv2d(x, p[:3], p[3:], backend=backend).tanh()  # noqa: E731
    check_compiled(fn, [x, *ws, *bs], "aot_eager")


@pytest.mark.skipif("cpu" not in transxnet_ops.available_backends("cpu"), reason="extension not built")
def test_inductor_with_cpu_kernels():
    """Full inductor codegen around the C++ ops (one case: inductor compiles C++ and is slow on 2 cores)."""
    fn = lambda x, w, b: transxnet_ops.idconv(x, w, b, backend="cpu").relu() + 1  # noqa: E731
    check_compiled(fn, idconv_inputs("cpu"), "inductor")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graphs_reduce_overhead(backend):
    """Kernels must run on torch's current stream, or CUDA-graph replay gives stale results."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x, w, b: transxnet_ops.idconv(x, w, b, backend=backend) * 1.5,
                       mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # warm-up, record, replay with new data
        x, w, b = [t.detach() for t in idconv_inputs("cuda")]
        y = fn(x, w, b)
        assert rel_err(y, transxnet_ops.reference.idconv(x, w, b) * 1.5) < 1e-5
    attn = torch.compile(lambda q, k, v, bias: transxnet_ops.osra_attention(q, k, v, bias, backend=backend),
                         mode="reduce-overhead", fullgraph=True)
    for _ in range(4):
        q, k, v, bias = [t.detach() for t in attn_inputs("cuda")]
        assert rel_err(attn(q, k, v, bias), transxnet_ops.reference.osra_attention(q, k, v, bias)) < 1e-5
