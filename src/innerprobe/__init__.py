"""innerprobe: probe trained neural networks from the inside.

Three methods share one way to say *where* in a model (:class:`Site`):
APEX activation perturbation (:mod:`innerprobe.perturb`), path patching
(:mod:`innerprobe.patch`) and excitation pullbacks (:mod:`innerprobe.pullback`).
"""

from ._version import __version__
from .core.hooks import HookSession, count_hooks, preserved_state, run_with_cache
from .core.sites import ResolvedSite, Site, resolve
from .errors import ConfigError, DataError, InnerprobeError, ModelError, SiteError
from .results import Result

__all__ = [
    "ConfigError",
    "DataError",
    "HookSession",
    "InnerprobeError",
    "ModelError",
    "ResolvedSite",
    "Result",
    "Site",
    "SiteError",
    "count_hooks",
    "preserved_state",
    "resolve",
    "run_with_cache",
    "__version__",
]
