"""Public ops: input checks, backend dispatch, and autograd + fake registration of the custom ops.

Every compiled backend exposes one forward and one backward custom op with the same schema:
  idconv{sfx}(x, weight, bias?) -> y
  idconv_backward{sfx}(grad_y, x, weight) -> (grad_x, grad_weight, grad_bias)
  dwconv2d{sfx}(x, weight, bias?, split_sizes, kernel_sizes) -> y
  dwconv2d_backward{sfx}(grad_y, x, weight, split_sizes, kernel_sizes, bias_requires_grad)
      -> (grad_x, grad_weight, grad_bias)
  osra_attention{sfx}(q, k, v, bias?, scale) -> (out, lse)
  osra_attention_backward{sfx}(grad_out, q, k, v, bias?, out, lse, scale, bias_requires_grad)
      -> (grad_q, grad_k, grad_v, grad_bias)
where sfx is "" for the C++/CUDA kernels (csrc/ops.cpp) and "_triton" for the Triton ones (triton/).
Autograd is registered here, once, for all of them; the backward of each is its backward op.
Plus one inference-only op, C++ CPU only (other devices compose it from the ops above):
  dwconv2d_inference(x, weight, bias?, in_scale?, in_shift?, split_sizes, kernel_sizes, gelu) -> y
"""
import torch

from . import _checks, _ext, _fakes, backends, reference

_NS = "transxnet_ops"


def _op(name):
    return getattr(getattr(torch.ops, _NS), name)


# ---------------------------------------------------------------- autograd, shared by every backend
def _register_idconv_autograd(suffix):
    backward_op = f"{_NS}::idconv_backward{suffix}"

    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = _op(backward_op.split("::")[1])(grad_y, x, weight)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None

    torch.library.register_autograd(f"{_NS}::idconv{suffix}", backward, setup_context=setup_context)


def _register_dwconv_autograd(suffix):
    backward_name = f"dwconv2d_backward{suffix}"

    def setup_context(ctx, inputs, output):
        x, weight, bias, split_sizes, kernel_sizes = inputs
        ctx.save_for_backward(x, weight)
        ctx.split_sizes, ctx.kernel_sizes = split_sizes, kernel_sizes

    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        bias_requires_grad = ctx.needs_input_grad[2]
        grad_x, grad_weight, grad_bias = _op(backward_name)(
            grad_y, x, weight, ctx.split_sizes, ctx.kernel_sizes, bias_requires_grad)
        return grad_x, grad_weight, grad_bias if bias_requires_grad else None, None, None

    torch.library.register_autograd(f"{_NS}::dwconv2d{suffix}", backward, setup_context=setup_context)


def _register_attention_autograd(suffix):
    backward_name = f"osra_attention_backward{suffix}"

    def setup_context(ctx, inputs, output):
        q, k, v, bias, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_out, _grad_lse):
        q, k, v, bias, out, lse = ctx.saved_tensors
        bias_requires_grad = bias is not None and ctx.needs_input_grad[3]
        grad_q, grad_k, grad_v, grad_bias = _op(backward_name)(
            grad_out, q, k, v, bias, out, lse, ctx.scale, bias_requires_grad)
        return grad_q, grad_k, grad_v, grad_bias if bias_requires_grad else None, None

    torch.library.register_autograd(f"{_NS}::osra_attention{suffix}", backward, setup_context=setup_context)


def _register_native_fakes():
    for name, fake in [("idconv", _fakes.idconv_fake), ("idconv_backward", _fakes.idconv_backward_fake),
                       ("dwconv2d", _fakes.dwconv2d_fake), ("dwconv2d_backward", _fakes.dwconv2d_backward_fake),
                       ("dwconv2d_inference", _fakes.dwconv2d_inference_fake),
                       ("osra_attention", _fakes.osra_attention_fake),
                       ("osra_attention_backward", _fakes.osra_attention_backward_fake)]:
        torch.library.register_fake(f"{_NS}::{name}", fake)


def _register_reduce_autograd(suffix):
    """osra_reduce: differentiable in x and every parameter (not the running statistics); u and stats are
    saved intermediates/statistics, not differentiable outputs."""
    backward_name = f"osra_reduce_backward{suffix}"

    def setup_context(ctx, inputs, output):
        (x, w1, g1, b1, _rm1, _rv1, w2, g2, b2, _rm2, _rv2, w3, b3, sr_ratio, eps1, eps2, training, _save_u) = inputs
        _out, u, stats = output
        ctx.save_for_backward(x, u, stats, w1, g1, b1, w2, g2, b2, w3, b3)
        ctx.config = (sr_ratio, eps1, eps2, training)
        ctx.mark_non_differentiable(u, stats)

    def backward(ctx, grad_out, _grad_u, _grad_stats):
        x, u, stats, *params = ctx.saved_tensors
        if u.numel() == 0 and x.numel() > 0:
            raise RuntimeError("osra_reduce: backward needs the forward's u (call it with save_u=True)")
        gx, gw1, gg1, gb1, gw2, gg2, gb2, gw3, gb3 = _op(backward_name)(grad_out, x, u, stats, *params, *ctx.config)
        return gx, gw1, gg1, gb1, None, None, gw2, gg2, gb2, None, None, gw3, gb3, None, None, None, None, None

    torch.library.register_autograd(f"{_NS}::osra_reduce{suffix}", backward, setup_context=setup_context)


def _register_idconv_weights_autograd(suffix):
    backward_name = f"idconv_weights_backward{suffix}"

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)  # logits, bias_logits, weight, bias (None entries allowed)

    def backward(ctx, grad_weight_out, grad_bias_out):
        logits, bias_logits, weight, bias = ctx.saved_tensors
        grads = _op(backward_name)(grad_weight_out, grad_bias_out, logits, bias_logits, weight, bias)
        grad_logits, grad_bias_logits, grad_weight, grad_bias = grads
        return (grad_logits, grad_bias_logits if bias_logits is not None else None, grad_weight,
                grad_bias if bias is not None else None)

    torch.library.register_autograd(f"{_NS}::idconv_weights{suffix}", backward, setup_context=setup_context)


def _register_native_reduce_fakes():
    for name, fake in [("osra_reduce", _fakes.osra_reduce_fake),
                       ("osra_reduce_backward", _fakes.osra_reduce_backward_fake),
                       ("idconv_weights", _fakes.idconv_weights_fake),
                       ("idconv_weights_backward", _fakes.idconv_weights_backward_fake)]:
        torch.library.register_fake(f"{_NS}::{name}", fake)


if _ext.has_cpu_kernels():
    _register_native_fakes()
    _register_idconv_autograd("")
    _register_dwconv_autograd("")
    _register_attention_autograd("")
    _register_native_reduce_fakes()
    _register_reduce_autograd("")
    _register_idconv_weights_autograd("")

if _ext.has_triton():
    _register_idconv_autograd("_triton")
    if hasattr(getattr(torch.ops, _NS), "dwconv2d_triton"):
        _register_dwconv_autograd("_triton")
    _register_attention_autograd("_triton")
    _register_reduce_autograd("_triton")
    _register_idconv_weights_autograd("_triton")

_SUFFIX = {"cpu": "", "cuda": "", "triton": "_triton"}


# ---------------------------------------------------------------- AMP
def _autocast(*tensors):
    """Custom ops are opaque to autocast: cast floating inputs to the autocast dtype ourselves."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


# ---------------------------------------------------------------- public ops
def idconv(x, weight, bias=None, backend=None):
    """Per-sample depthwise convolution (the IDConv of TransXNet), stride 1, zero padding K//2.

    x (B, C, H, W), weight (B, C, K, K) with K odd, bias (B, C) or None -> (B, C, H, W):
    y[b,c,h,w] = bias[b,c] + sum_ij weight[b,c,i,j] * x[b,c,h+i-K//2,w+j-K//2].
    Differentiable in x, weight and bias. `backend` overrides the global choice (see set_backend).
    """
    _checks.check_idconv(x, weight, bias)
    x, weight, bias = _autocast(x, weight, bias)
    name = backends.resolve(backend, x.device.type)
    _checks.check_gpu_kernel_size(weight, name)
    if name == "reference":
        return reference.idconv(x, weight, bias)
    return _op("idconv" + _SUFFIX[name])(x, weight, bias)


def dwconv2d(x, weight, bias=None, backend=None):
    """Static depthwise convolution, stride 1, zero padding k//2: nn.Conv2d(C, C, k, padding=k//2, groups=C).

    x (B, C, H, W), weight (C, 1, k, k) with k odd (nn.Conv2d's layout), bias (C,) or None -> (B, C, H, W).
    Differentiable in x, weight and bias; grad_weight is reduced over the batch deterministically.
    """
    return multiscale_dwconv2d(x, [weight], None if bias is None else [bias], backend=backend, _op_name="dwconv2d")


def _packed_dwconv_params(weights, biases):
    """The kernels' layout of per-split depthwise parameters: (1-D packed weight (a view for one weight), (C,)
    bias or None, split_sizes, kernel_sizes)."""
    weight = weights[0].reshape(-1) if len(weights) == 1 else torch.cat([w.reshape(-1) for w in weights])
    bias = None if biases is None else biases[0] if len(biases) == 1 else torch.cat(biases)
    return weight, bias, [int(w.shape[0]) for w in weights], [int(w.shape[-1]) for w in weights]


def multiscale_dwconv2d(x, weights, biases=None, backend=None, _op_name="multiscale_dwconv2d"):
    """Depthwise convolutions of several kernel sizes on consecutive channel splits, in one op.

    weights[s] (c_s, 1, k_s, k_s) convolves channels [sum(c_<s), sum(c_<=s)) of x with padding k_s//2, as
    torch.cat([conv_s(part_s) for ...], 1) with conv_s = nn.Conv2d(c_s, c_s, k_s, padding=k_s//2, groups=c_s)
    (TransXNet's MS-FFN: k = 1, 3, 5, 7). biases: None or one (c_s,) tensor per weight.
    """
    weights = list(weights)
    biases = None if biases is None else list(biases)
    _checks.check_dwconv2d(x, weights, biases, op=_op_name)
    x, *rest = _autocast(x, *weights, *(biases or []))
    weights, biases = rest[:len(weights)], (rest[len(weights):] or None)
    name = backends.resolve(backend, x.device.type)
    weight, bias, split_sizes, kernel_sizes = _packed_dwconv_params(weights, biases)
    _checks.check_gpu_kernel_sizes(kernel_sizes, name, op=_op_name)
    if name == "reference":
        return reference.dwconv2d(x, weight, bias, split_sizes, kernel_sizes)
    return _op("dwconv2d" + _SUFFIX[name])(x, weight, bias, split_sizes, kernel_sizes)


def multiscale_dwconv2d_inference(x, weights, biases=None, in_scale=None, in_shift=None, gelu=False, backend=None):
    """Inference only: gelu(multiscale_dwconv2d(x * in_scale + in_shift)) in one pass over x.

    in_scale, in_shift: (C,) or both None - a per-channel affine map of the input (an eval-mode BatchNorm before
    the conv), applied before the zero padding, as the unfused modules compute it; gelu: the exact (erf) GELU on
    the output, or none. On the C++ CPU backend the kernels apply the map as they read x and the GELU as they write
    y (TransXNet's MS-FFN: BatchNorm -> multi-scale conv -> GELU; STE: 3x3 conv -> GELU); on the other backends
    the same math runs as separate ops. No autograd: inputs that require grad (with grad mode on) raise.
    """
    op = "multiscale_dwconv2d_inference"
    weights = list(weights)
    biases = None if biases is None else list(biases)
    _checks.check_dwconv2d(x, weights, biases, op=op)
    _checks.check_input_map(x, in_scale, in_shift, op=op)
    _checks.check_inference_only(op, [x, in_scale, in_shift, *weights, *(biases or [])])
    x, in_scale, in_shift, *rest = _autocast(x, in_scale, in_shift, *weights, *(biases or []))
    weights, biases = rest[:len(weights)], (rest[len(weights):] or None)
    name = backends.resolve(backend, x.device.type)
    if name != "cpu":
        if in_scale is not None:
            x = torch.addcmul(in_shift.view(1, -1, 1, 1), x, in_scale.view(1, -1, 1, 1))
        y = multiscale_dwconv2d(x, weights, biases, backend=name, _op_name=op)
        return torch.nn.functional.gelu(y) if gelu else y
    weight, bias, split_sizes, kernel_sizes = _packed_dwconv_params(weights, biases)
    return _op("dwconv2d_inference")(x, weight, bias, in_scale, in_shift, split_sizes, kernel_sizes, gelu)


def _bias_4d(bias, q, k):
    """Lift a bias broadcastable to (B, H, N, M) to the kernels' (1|B, 1|H, N, M) form (autograd sums back)."""
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    N, M = q.shape[2], k.shape[2]
    if bias.shape[2] != N or bias.shape[3] != M:
        bias = bias.expand(bias.shape[0], bias.shape[1], N, M)
    return bias


def osra_attention(q, k, v, bias=None, scale=None, backend=None):
    """softmax(q k^T * scale + bias) v without keeping the attention matrix (the OSRA attention core).

    q (B, heads, N, d), k and v (B, heads, M, d), bias broadcastable to (B, heads, N, M) or None,
    scale defaults to d ** -0.5 -> (B, heads, N, d). Differentiable in q, k, v and bias.
    """
    _checks.check_osra_attention(q, k, v, bias)
    q, k, v, bias = _autocast(q, k, v, bias)
    name = backends.resolve(backend, q.device.type)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if name == "reference":
        return reference.osra_attention(q, k, v, bias, scale)
    if bias is not None:
        bias = _bias_4d(bias, q, k)
    out, _lse = _op("osra_attention" + _SUFFIX[name])(q, k, v, bias, scale)
    return out
