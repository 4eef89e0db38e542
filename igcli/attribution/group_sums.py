"""Row sums by group in a fixed order on every device: the adaptive rule's decisions rest on them."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ORDERED_SCATTER_DEVICES = {"cpu"}  # where index_add_ adds rows for a repeated index in index order
WEIGHTED_BLOCK_BYTES = 4 << 20  # weighted copies of stored maps made at a time, on the CPU (sum_rows_by_group)


def on_device(like: Tensor, values: np.ndarray) -> Tensor:
    """``values`` as a tensor on like's device."""
    return torch.from_numpy(values).to(like.device)


def rows(tensor: Tensor, index: np.ndarray) -> Tensor:
    """The rows ``index`` of ``tensor``."""
    # index_select, not tensor[index]: advanced indexing of whole maps is far slower on the CPU.
    return tensor.index_select(0, on_device(tensor, index))


def sum_rows_by_group(values: Tensor, group: np.ndarray, groups: int, weight: np.ndarray | None = None) -> Tensor:
    """Row i of ``values`` (times ``weight[i]``) summed into row group[i] of a [groups, ...]
    result, in a fixed order on every device and run: these sums decide which intervals are bisected."""
    shape = (groups,) + tuple(values.shape[1:])
    if values.device.type in ORDERED_SCATTER_DEVICES:
        # index_add_: a dense one-hot product costs far more here.
        index, summed = on_device(values, group), values.new_zeros(shape)
        if weight is None:
            return summed.index_add_(0, index, values)
        scale = on_device(values, weight).to(values.dtype).view((-1,) + (1,) * (values.dim() - 1))
        count = max(1, WEIGHTED_BLOCK_BYTES // max(1, values[0].numel() * values.element_size()))
        # Weighted copies a block at a time: all at once, a copy of every stored map raised the peak.
        for first in range(0, len(group), count):
            block = slice(first, first + count)
            summed.index_add_(0, index[block], values[block] * scale[block])
        return summed
    # CUDA's index_add_ adds in whatever order its atomics land; a matrix product does not.
    matrix = np.zeros((groups, len(group)))
    matrix[group, np.arange(len(group))] = 1 if weight is None else weight
    return (on_device(values, matrix).to(values.dtype) @ values.flatten(1)).view(shape)
