"""Max pooling moved before the ReLU that feeds it: the same numbers, on a fraction of the activations.

ReLU is monotone, so max(relu(a), relu(b), ...) = relu(max(a, b, ...)) exactly, and both orders send
a window's gradient to the same element: its first largest input where that is positive, nowhere
(a zero ReLU slope) where it is not. Pooling first, the ReLU's forward and backward run on the pooled
activations only (a quarter of them behind a 2x2 pool), with bit-identical scores and gradients
(see docs/performance.md#pool-first). conv -> ReLU -> max pool is how VGG-style networks, LeNet-style
sample models and the ResNet stem are built.

Like backends/rewrites/fold.py this works on torch.fx's symbolic trace: a new graph that shares the user's
layers and parameters. Models that cannot be traced, or have no such pair, stay as they are. A pair
is left alone where the ReLU's input or output has another use (an in-place ReLU would have
changed that other use's input), or where the pool also returns indices.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn import functional as F

_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
_RELU_METHODS = {"relu", "relu_"}
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveMaxPool3d)
# Functions that return the pooled tensor alone: fx records F.max_pool2d(..., return_indices=True)
# as the separate max_pool2d_with_indices, which is not here.
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                   F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
                   torch.ops.aten.max_pool1d.default, torch.ops.aten.max_pool2d.default,
                   torch.ops.aten.max_pool3d.default}


def pool_before_relu(module: nn.Module) -> nn.Module:
    """A traced copy of ``module`` with every ReLU -> max pool pair swapped, sharing its layers and
    parameters; ``module`` itself where there is no such pair or it cannot be traced."""
    try:
        traced = fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 -- any trace failure means "leave it", never an error
        return module
    pairs = [(relu, pool) for relu in traced.graph.nodes if (pool := _pool_after(traced, relu)) is not None]
    if not pairs:
        return module
    for relu, pool in pairs:
        # relu(a) -> pool(relu) -> users   becomes   pool(a) -> relu(pool) -> users
        pool.replace_all_uses_with(relu)
        pool.replace_input_with(relu, relu.args[0])
        relu.replace_input_with(relu.args[0], pool)
        pool.append(relu)  # the ReLU now runs after the pool
    traced.graph.lint()
    traced.recompile()
    return traced


def _pool_after(traced: fx.GraphModule, relu: fx.Node) -> fx.Node | None:
    """The max pool that is ``relu``'s only use and may run first, or None."""
    if not _is_relu(traced, relu) or len(relu.users) != 1 or not relu.args or set(relu.kwargs) - {"inplace"}:
        return None
    source, *options = relu.args
    (pool,) = relu.users
    if any(isinstance(option, fx.Node) for option in [*options, *relu.kwargs.values()]):
        return None
    if not isinstance(source, fx.Node) or len(source.users) != 1 or not _is_pool(traced, pool):
        return None
    if pool.args[0] is not relu or relu in pool.args[1:] or relu in pool.kwargs.values():
        return None
    return pool


def _is_relu(traced: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(traced.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS


def _is_pool(traced: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        layer = traced.get_submodule(node.target)
        return isinstance(layer, _POOL_MODULES) and not layer.return_indices
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS
