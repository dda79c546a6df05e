"""Shape-only (fake/meta) implementations shared by every backend's ops: outputs are contiguous, except the
depthwise ops' activations, which follow x's layout (`activation_format`)."""
import torch


def activation_format(x):
    """Memory format of the depthwise ops' activation outputs (y, grad_x); the rule of csrc/activation_layout.h,
    shared by every backend: channels_last when x has its channels innermost (stride 1, more than one channel)
    and is not NCHW-contiguous - a channels_last tensor or a slice of one - as nn.Conv2d does; else contiguous."""
    channels_last = x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def empty_activation(x):
    return torch.empty_like(x, memory_format=activation_format(x))


def idconv_fake(x, weight, bias):
    return empty_activation(x)


def idconv_backward_fake(grad_y, x, weight):
    return empty_activation(x), weight.new_empty(weight.shape), x.new_empty(x.shape[:2])


def dwconv2d_fake(x, weight, bias, split_sizes, kernel_sizes):
    return empty_activation(x)


def dwconv2d_backward_fake(grad_y, x, weight, split_sizes, kernel_sizes, bias_requires_grad):
    grad_bias = x.new_empty(x.shape[1]) if bias_requires_grad else x.new_empty(0)
    return empty_activation(x), weight.new_empty(weight.shape), grad_bias


def osra_attention_fake(q, k, v, bias, scale):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


def osra_attention_backward_fake(grad_out, q, k, v, bias, out, lse, scale, bias_requires_grad):
    grad_bias = bias.new_empty(bias.shape) if bias is not None and bias_requires_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias
