"""The names the config chooses among for the attribution: rules, baseline kinds, the map tolerance.

Plain enums and constants, without torch, so that reading and checking a config imports no model
runtime (``igcli --help`` and ``igcli validate-config`` stay fast).
"""
from __future__ import annotations

import enum

# The default map tolerance: the estimated relative L2 error of the map that the rule refines until,
# besides completeness. Chosen on real models (docs/performance.md).
DEFAULT_MAP_TOLERANCE = 0.07


class Rule(str, enum.Enum):
    """The quadrature rules igcli offers; the CLI and config take these names."""

    riemann_left = "riemann_left"
    riemann_right = "riemann_right"
    riemann_middle = "riemann_middle"
    riemann_trapezoid = "riemann_trapezoid"
    gausslegendre = "gausslegendre"
    # Not one table: the engine starts from the trapezoid grid and bisects only the intervals
    # whose own completeness is off (see attribution/adaptive.py). As a table it is the trapezoid.
    adaptive = "adaptive"


DEFAULT_RULE = Rule.adaptive  # what `method` defaults to, in the config and in Quadrature


class BaselineKind(str, enum.Enum):
    black = "black"  # pixel value 0, then normalised
    white = "white"  # pixel value 1, then normalised
    zeros = "zeros"  # 0 in model space, after normalisation
    constant = "constant"  # pixel value `value`, then normalised
    uniform = "uniform"  # pixels drawn from U(0, 1)
    gaussian = "gaussian"  # the input plus N(0, sigma) pixel noise, clipped to [0, 1]
    blur = "blur"  # the input blurred by a Gaussian of `sigma` pixels
    file = "file"  # an image (preprocessed like inputs) or a .npy in model space
    pad = "pad"  # text: every token but the special ones ([CLS], [SEP]) replaced by PAD
    token = "token"  # text: the same with a chosen token
    auto = "auto"  # per input, whichever of black, white and its mean colour the model scores lowest for the target


TEXT_BASELINES = {BaselineKind.zeros, BaselineKind.pad, BaselineKind.token}  # zeros: the zero embedding
