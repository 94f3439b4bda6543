"""Case studies: small-scale reproductions, one or more per method.

Each study is a function ``run(out: Path, seeds: int = 3, quick: bool = False) -> Result`` that
writes ``out/summary.json`` (headline figures with seeds and 95% CIs), ``out/section.json`` (a
report section, see :mod:`innerprobe.report.sections`) and its PNG figures into ``out``.
Register a study by adding one line to ``STUDIES`` ("name": "module:function"); the CLI
(``innerprobe study NAME``) and ``innerprobe demo`` find it here. Imports are lazy.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..errors import ConfigError, did_you_mean

STUDIES: dict[str, str] = {
    "apex-transition": "innerprobe.studies.apex:run_transition",
    "apex-regularity": "innerprobe.studies.apex:run_regularity",
    "apex-random-labels": "innerprobe.studies.apex:run_random_labels",
    "apex-transitions": "innerprobe.studies.apex:run_transitions",
    "apex-backdoor": "innerprobe.studies.apex_backdoor:run_backdoor",
    "pullback-digits": "innerprobe.studies.pullback_digits:run",
    "path-induction": "innerprobe.studies.path_induction:run",
    "path-ioi": "innerprobe.studies.path_ioi:run",
    "lm-probes": "innerprobe.studies.lm_probes:run",
}


def get_study(name: str) -> Callable:
    if name not in STUDIES:
        raise ConfigError(
            f"unknown study {name!r}",
            hint=did_you_mean(name, STUDIES) + f" (studies: {', '.join(STUDIES) or 'none yet'})",
        )
    module, func = STUDIES[name].split(":")
    return getattr(importlib.import_module(module), func)
