"""innerprobe.pullback: excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832) and gradient baselines (docs/pullback.md).

    from innerprobe.pullback import ExcitationPullback, LogitDiff
    A = ExcitationPullback(model, temperature=0.3).attribute(x, target=3)
    r = ExcitationPullback(lm, preset="successor", functional=True).attribute(tokens, target=LogitDiff(io, s), reduce="dot")

Rules (:mod:`.rules`) change only the backward pass; :func:`apply_rules` applies them reversibly,
per call (modules, reused modules, in-place and functional activations, hand-written GELUs), with
a coverage report. Metrics live in :mod:`innerprobe.pullback.metrics` (imported on demand).
"""

from .apply import (
    PRESETS,
    Coverage,
    PullbackWarning,
    Rules,
    apply_rules,
    calibrate_temperatures,
    gradient_rules,
    guided_rules,
    preset_rules,
    pullback_rules,
)
from .attribution import (
    METHODS,
    AscentResult,
    Attribution,
    ExcitationPullback,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    PullbackAscent,
    SmoothGrad,
    pullback_ascent,
    reduce_map,
    target_gradient,
)
from .rules import (
    AttentionSurrogate,
    Gate,
    GELUGate,
    GuidedGate,
    HardGate,
    MaxPoolSurrogate,
    NormSurrogate,
    Rule,
    SiLUGate,
    gate_value,
)
from .targets import LogitDiff, TokenTarget

__all__ = [
    "METHODS",
    "PRESETS",
    "AscentResult",
    "AttentionSurrogate",
    "Attribution",
    "Coverage",
    "ExcitationPullback",
    "GELUGate",
    "Gate",
    "Gradient",
    "GuidedBackprop",
    "GuidedGate",
    "HardGate",
    "InputXGradient",
    "IntegratedGradients",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "LogitDiff",
    "MaxPoolSurrogate",
    "NormSurrogate",
    "PullbackAscent",
    "PullbackWarning",
    "Rule",
    "Rules",
    "SiLUGate",
    "SmoothGrad",
    "TokenTarget",
    "apply_rules",
    "calibrate_temperatures",
    "gate_value",
    "gradient_rules",
    "guided_rules",
    "preset_rules",
    "pullback_ascent",
    "pullback_rules",
    "reduce_map",
    "target_gradient",
]
