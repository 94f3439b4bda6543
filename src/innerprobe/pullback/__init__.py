"""innerprobe.pullback: excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832) and gradient baselines.

    from innerprobe.pullback import ExcitationPullback
    A = ExcitationPullback(model, temperature=0.3).attribute(x, target=3)

Rules (:mod:`.rules`) change only the backward pass; :func:`apply_rules` applies them reversibly,
per call (modules, reused modules, in-place and functional activations), with a coverage report.
Metrics live in :mod:`innerprobe.pullback.metrics` (imported on demand).
"""
from .apply import Coverage, Rules, apply_rules, calibrate_temperatures, gradient_rules, guided_rules, pullback_rules
from .attribution import (METHODS, AscentResult, Attribution, ExcitationPullback, Gradient, GuidedBackprop, InputXGradient,
                          IntegratedGradients, PullbackAscent, SmoothGrad, pullback_ascent, target_gradient)
from .rules import Gate, GELUGate, GuidedGate, HardGate, MaxPoolSurrogate, Rule, SiLUGate, gate_value

__all__ = ["Coverage", "Rules", "apply_rules", "calibrate_temperatures", "gradient_rules", "guided_rules", "pullback_rules",
           "METHODS", "AscentResult", "Attribution", "ExcitationPullback", "Gradient", "GuidedBackprop", "InputXGradient",
           "IntegratedGradients", "PullbackAscent", "SmoothGrad", "pullback_ascent", "target_gradient",
           "Gate", "GELUGate", "GuidedGate", "HardGate", "MaxPoolSurrogate", "Rule", "SiLUGate", "gate_value"]
