"""Shape-only (fake/meta) implementations shared by every backend's ops: outputs are contiguous."""
import torch


def idconv_fake(x, weight, bias):
    return x.new_empty(x.shape)


def idconv_backward_fake(grad_y, x, weight):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(x.shape[:2])


def dwconv2d_fake(x, weight, bias, split_sizes, kernel_sizes):
    return x.new_empty(x.shape)


def dwconv2d_backward_fake(grad_y, x, weight, split_sizes, kernel_sizes, bias_requires_grad):
    grad_bias = x.new_empty(x.shape[1]) if bias_requires_grad else x.new_empty(0)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), grad_bias


def osra_attention_fake(q, k, v, bias, scale):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


def osra_attention_backward_fake(grad_out, q, k, v, bias, out, lse, scale, bias_requires_grad):
    grad_bias = bias.new_empty(bias.shape) if bias is not None and bias_requires_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias
