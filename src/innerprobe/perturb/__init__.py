"""APEX activation-perturbation probing (Ren, Luo, Li 2026, arXiv 2602.03586).

``apex(model, x, sigmas)`` adds noise after every hidden nonlinearity (or at any sites), runs K
noisy passes per input, and returns class counts [N, S, C] (a language model's logits at a
position, over the vocabulary or candidates: :class:`Readout`) with every read-out of
docs/apex.md, 'Definitions': escape noise and class, large-noise class histogram, sample-dependence
curve, and the clean-margin / input-noise controls. :class:`Engine` is the reusable core,
:func:`escape_bisect` the bisection refinement, :func:`backdoor_scan` a reference-free scan.
"""

from .engine import NONFINITE, Engine, default_sites, is_activation, mix_seed
from .noise import KINDS, NoiseKind, get_kind
from .outputs import Readout
from .readouts import (
    Escape,
    class_histogram,
    escape_class,
    escape_noise,
    half_way,
    logit_margin,
    mutual_information,
    normalized_entropy,
    sample_dependence,
    shares,
    survival,
)
from .sweep import apex, escape_bisect, escape_early_exit, summarize
from .where import embedding_site, residual_sites

__all__ = [
    "KINDS",
    "NONFINITE",
    "Engine",
    "Escape",
    "NoiseKind",
    "Readout",
    "apex",
    "class_histogram",
    "default_sites",
    "embedding_site",
    "escape_bisect",
    "escape_class",
    "escape_early_exit",
    "escape_noise",
    "get_kind",
    "half_way",
    "is_activation",
    "logit_margin",
    "mix_seed",
    "mutual_information",
    "normalized_entropy",
    "residual_sites",
    "sample_dependence",
    "shares",
    "summarize",
    "survival",
]


def __getattr__(name):  # the scan is an application of the engine; import it lazily
    if name == "backdoor_scan":
        from .scan import backdoor_scan

        return backdoor_scan
    raise AttributeError(name)
