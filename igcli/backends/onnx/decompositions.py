"""Backward ATen ops that torch.onnx cannot translate, rewritten as forward ops it can."""
from __future__ import annotations

import torch
from torch import Tensor

from igcli.errors import ModelError

aten = torch.ops.aten


def _convolution_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    if not output_mask[0]:
        return None, None, None
    if transposed:
        # d conv_transpose / d input is the plain convolution with the same weights.
        zeros = [0] * len(stride)
        return aten.convolution(grad_out, weight, None, stride, padding, dilation, False, zeros, groups), None, None
    # d conv / d input is the transposed convolution with the same weights; output_padding
    # restores the input size that striding rounded away.
    extra = []
    for d in range(len(stride)):
        span = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1
        extra.append(x.shape[2 + d] - span)
    return aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups), None, None


def _adaptive_avg_pool2d_backward(grad_out, x):
    (out_h, out_w), (in_h, in_w) = grad_out.shape[-2:], x.shape[-2:]
    if in_h % out_h or in_w % out_w:
        raise ModelError(f"adaptive average pooling from {in_h}x{in_w} to {out_h}x{out_w} is not supported in "
                         "gradient graphs (sizes must divide)")
    kh, kw = in_h // out_h, in_w // out_w
    spread = grad_out[..., :, None, :, None].expand(*grad_out.shape[:-2], out_h, kh, out_w, kw)
    return spread.reshape(x.shape) / (kh * kw)


# The helpers below build their index maps from traced torch ops (arange, comparisons), not from
# captured constant tensors, which torch.export cannot lift out of the traced submodule.

def _avg_pool2d_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    kernel = _pair(kernel_size)
    stride, padding = _pair(stride or kernel_size), _pair(padding)
    channels = x.shape[1]
    size_in, size_out = [int(d) for d in x.shape[2:]], [int(d) for d in grad_out.shape[2:]]
    if divisor_override:
        divisor = divisor_override
    else:
        rows, columns = (_window_sizes(size_in[d], size_out[d], kernel[d], stride[d], padding[d], count_include_pad,
                                       grad_out) for d in range(2))
        divisor = rows[:, None] * columns[None, :]
    ones = torch.ones(channels, 1, *kernel, dtype=grad_out.dtype, device=grad_out.device)
    extra = [size_in[d] - ((size_out[d] - 1) * stride[d] - 2 * padding[d] + kernel[d]) for d in range(2)]
    # Output positions past the input (ceil_mode) fall outside it: drop them by cropping.
    spread = aten.convolution(grad_out / divisor, ones, None, stride, padding, (1, 1), True,
                              [max(e, 0) for e in extra], channels)
    return spread[..., : size_in[0], : size_in[1]]


def _window_sizes(size_in: int, size_out: int, kernel: int, stride: int, padding: int, include_pad: bool,
                  like: Tensor) -> Tensor:
    """What torch's avg_pool divides by along one axis: border windows (padding, ceil_mode) hold fewer."""
    start = torch.arange(size_out, dtype=like.dtype, device=like.device) * stride - padding
    end = torch.clamp(start + kernel, max=size_in + padding)
    if include_pad:
        return end - start
    return torch.clamp(end, max=size_in) - torch.clamp(start, min=0)


def _upsample_backward(mode: str):
    def backward(grad_out, output_size, input_size, *rest):
        align_corners = bool(rest[0]) if mode == "linear" else False
        scales = (list(rest[1:] if mode == "linear" else rest) + [None, None])[:2]
        rows, columns = (_interpolation_matrix(int(input_size[2 + d]), int(output_size[d]), mode, align_corners,
                                               scales[d], grad_out) for d in range(2))
        # Upsampling is linear and separable: out = A_h x A_w^T, so grad_in = A_h^T grad A_w.
        return torch.matmul(torch.matmul(rows.t(), grad_out), columns)
    return backward


def _interpolation_matrix(size_in: int, size_out: int, mode: str, align_corners: bool, scale, like: Tensor) -> Tensor:
    """A [size_out, size_in] with out = A @ in along one axis, as torch's upsampling computes it."""
    out = torch.arange(size_out, dtype=torch.float64, device=like.device)
    columns = torch.arange(size_in, device=like.device)[None, :]
    ratio = (1.0 / scale) if scale else size_in / size_out
    if mode == "nearest":
        index = torch.clamp(torch.floor(out * ratio), max=size_in - 1).long()
        return (index[:, None] == columns).to(like.dtype)
    if align_corners:
        source = out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    else:
        source = torch.clamp((out + 0.5) * ratio - 0.5, min=0.0)
    low = torch.clamp(torch.floor(source), max=size_in - 1).long()
    high = torch.clamp(low + 1, max=size_in - 1)
    weight = (source - low).to(like.dtype)[:, None]
    return (low[:, None] == columns).to(like.dtype) * (1 - weight) + (high[:, None] == columns).to(like.dtype) * weight


def _pair(value) -> tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(values[0]), int(values[-1]))


BACKWARD_DECOMPOSITIONS = {
    aten.avg_pool2d_backward.default: _avg_pool2d_backward,
    aten.upsample_nearest2d_backward.default: _upsample_backward("nearest"),
    aten.upsample_bilinear2d_backward.default: _upsample_backward("linear"),
    aten.convolution_backward.default: _convolution_backward,
    aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool2d_backward,
}
