"""Input validation of the public ops: every problem reported at once, naming the argument."""
import torch

# The GPU kernels keep a K x K filter per program; larger filters are not a TransXNet shape.
MAX_GPU_KERNEL_SIZE = 31


def _fail(op, problems, exc=ValueError):
    if problems:
        raise exc(f"{op}: invalid input:\n  - " + "\n  - ".join(problems))


def _describe(t):
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_tensor_types(op, named):
    bad = [f"{n} must be a torch.Tensor, got {type(t).__name__}" for n, t in named if not isinstance(t, torch.Tensor)]
    _fail(op, bad, TypeError)
    first_name, first = named[0]
    bad = []
    if not first.is_floating_point():
        bad.append(f"{first_name} must be a floating-point tensor, got {first.dtype}")
    for n, t in named[1:]:
        if t.dtype != first.dtype:
            bad.append(f"{n} must have {first_name}'s dtype {first.dtype}, got {t.dtype}")
        if t.device != first.device:
            bad.append(f"{n} must be on {first_name}'s device {first.device}, got {t.device}")
    _fail(op, bad, TypeError)


def check_idconv(x, weight, bias):
    named = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    _check_tensor_types("idconv", named)
    problems = []
    if x.dim() != 4:
        problems.append(f"x must be 4-D (B, C, H, W), got {_describe(x)}")
    else:
        B, C = x.shape[:2]
        if weight.dim() != 4 or tuple(weight.shape[:2]) != (B, C) or weight.shape[2] != weight.shape[3]:
            problems.append(f"weight must be (B, C, K, K) = ({B}, {C}, K, K), got {_describe(weight)}")
        elif weight.shape[-1] % 2 == 0:
            problems.append(f"weight's kernel size K must be odd (padding is K//2), got K={weight.shape[-1]}")
        if bias is not None and tuple(bias.shape) != (B, C):
            problems.append(f"bias must be (B, C) = ({B}, {C}) or None, got {_describe(bias)}")
    _fail("idconv", problems)


def check_gpu_kernel_size(weight, backend):
    if backend in ("cuda", "triton") and weight.shape[-1] > MAX_GPU_KERNEL_SIZE:
        _fail("idconv", [f"the {backend} backend supports K <= {MAX_GPU_KERNEL_SIZE}, got weight with "
                         f"K={weight.shape[-1]}; use backend='cpu' or 'reference'"])


def check_osra_attention(q, k, v, bias):
    named = [("q", q), ("k", k), ("v", v)] + ([("bias", bias)] if bias is not None else [])
    _check_tensor_types("osra_attention", named)
    problems = [f"{n} must be 4-D (B, heads, tokens, head_dim), got {_describe(t)}"
                for n, t in named[:3] if t.dim() != 4]
    _fail("osra_attention", problems)
    B, H, N, D = q.shape
    M = k.shape[2]
    if tuple(k.shape) != (B, H, M, D):
        problems.append(f"k must be (B, heads, M, head_dim) = ({B}, {H}, M, {D}) like q, got {_describe(k)}")
    if tuple(v.shape) != tuple(k.shape):
        problems.append(f"v must have k's shape {tuple(k.shape)}, got {_describe(v)}")
    if bias is not None:
        target = (B, H, N, M)
        shape = tuple(bias.shape)
        if len(shape) > 4 or any(s not in (1, t) for s, t in zip(shape[::-1], target[::-1])):
            problems.append(f"bias must be broadcastable to (B, heads, N, M) = {target}, got {_describe(bias)}")
    _fail("osra_attention", problems)


def check_dwconv2d(x, weights, biases, op="dwconv2d"):
    """x (B, C, H, W); weights a list of (c_s, 1, k_s, k_s) with odd k_s and sum(c_s) == C; biases None or a
    list of (c_s,) tensors (None entries allowed only if all are None)."""
    named = [("x", x)] + [(f"weight[{i}]" if len(weights) > 1 else "weight", w) for i, w in enumerate(weights)]
    if biases is not None:
        named += [(f"bias[{i}]" if len(biases) > 1 else "bias", b) for i, b in enumerate(biases)]
    _check_tensor_types(op, named)
    problems = []
    if x.dim() != 4:
        problems.append(f"x must be 4-D (B, C, H, W), got {_describe(x)}")
    channels = 0
    for name, w in named[1:1 + len(weights)]:
        if w.dim() != 4 or w.shape[1] != 1 or w.shape[2] != w.shape[3]:
            problems.append(f"{name} must be a depthwise weight (c, 1, k, k), got {_describe(w)}")
        elif w.shape[-1] % 2 == 0:
            problems.append(f"{name}'s kernel size must be odd (padding is k//2), got k={w.shape[-1]}")
        else:
            channels += w.shape[0]
    if x.dim() == 4 and not problems and channels != x.shape[1]:
        problems.append(f"the weights cover {channels} channels, but x has C={x.shape[1]} ({_describe(x)})")
    if biases is not None:
        if len(biases) != len(weights):
            problems.append(f"expected {len(weights)} biases (one per weight), got {len(biases)}")
        else:
            for (name, b), w in zip(named[1 + len(weights):], weights):
                if b.dim() != 1 or (w.dim() >= 1 and b.shape[0] != w.shape[0]):
                    problems.append(f"{name} must be ({w.shape[0]},), got {_describe(b)}")
    _fail(op, problems)


def check_input_map(x, in_scale, in_shift, op):
    """The per-channel input map of the inference depthwise ops: both or neither, each (C,) like x."""
    if (in_scale is None) != (in_shift is None):
        raise ValueError(f"{op}: invalid input:\n  - in_scale and in_shift must be given together")
    if in_scale is None:
        return
    _check_tensor_types(op, [("x", x), ("in_scale", in_scale), ("in_shift", in_shift)])
    _fail(op, [f"{n} must be (C,) = ({x.shape[1]},), got {_describe(t)}"
               for n, t in (("in_scale", in_scale), ("in_shift", in_shift)) if t.dim() != 1 or t.shape[0] != x.shape[1]])


def check_inference_only(op, tensors):
    """The inference ops have no autograd: refuse inputs that would need gradients (rather than silently
    detaching them)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is inference only (no autograd), but an input requires grad: run it under "
                           "torch.no_grad() / torch.inference_mode(), or use the differentiable op without the "
                           "fused input map and GELU")


def check_gpu_kernel_sizes(kernel_sizes, backend, op="dwconv2d"):
    if backend in ("cuda", "triton") and max(kernel_sizes) > MAX_GPU_KERNEL_SIZE:
        _fail(op, [f"the {backend} backend supports kernel sizes <= {MAX_GPU_KERNEL_SIZE}, got {list(kernel_sizes)}; "
                   "use backend='cpu' or 'reference'"])
