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


def dwconv2d_inference_fake(x, weight, bias, in_scale, in_shift, split_sizes, kernel_sizes, gelu):
    return empty_activation(x)


def osra_attention_fake(q, k, v, bias, scale):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


def osra_attention_backward_fake(grad_out, q, k, v, bias, out, lse, scale, bias_requires_grad):
    grad_bias = bias.new_empty(bias.shape) if bias is not None and bias_requires_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias


def _reduced_size(size, sr_ratio):
    k = sr_ratio + 3
    return (size + 2 * (k // 2) - k) // sr_ratio + 1


def osra_reduce_fake(x, conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight,
                     bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var, local_weight, local_bias, sr_ratio,
                     eps1, eps2, training, save_u):
    B, C, H, W = x.shape
    shape = (B, C, _reduced_size(H, sr_ratio), _reduced_size(W, sr_ratio))
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    u = x.new_empty(shape) if training or save_u else x.new_empty(0)
    return x.new_empty(shape), u, x.new_empty((6, C), dtype=acc_dtype)


def osra_reduce_backward_fake(grad_out, x, u, stats, conv1_weight, bn1_weight, bn1_bias, conv2_weight, bn2_weight,
                              bn2_bias, local_weight, local_bias, sr_ratio, eps1, eps2, training):
    return tuple(t.new_empty(t.shape) for t in (x, conv1_weight, bn1_weight, bn1_bias, conv2_weight, bn2_weight,
                                                bn2_bias, local_weight, local_bias))


def idconv_weights_fake(logits, bias_logits, weight, bias):
    G, C, K, _ = weight.shape
    dyn_bias = logits.new_empty((logits.shape[0], C)) if bias is not None else logits.new_empty(0)
    return logits.new_empty((logits.shape[0], C, K, K)), dyn_bias


def idconv_weights_backward_fake(grad_weight_out, grad_bias_out, logits, bias_logits, weight, bias):
    return (logits.new_empty(logits.shape),
            bias_logits.new_empty(bias_logits.shape) if bias_logits is not None else logits.new_empty(0),
            weight.new_empty(weight.shape), bias.new_empty(bias.shape) if bias is not None else weight.new_empty(0))
