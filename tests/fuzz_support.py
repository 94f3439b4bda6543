"""Shared pieces of the fuzz tests (tests/test_fuzz_api.py, tests/test_fuzz_cli.py).

Profiles: ``INNERPROBE_FUZZ=fast`` (default: derandomised, few examples, the default suite stays
fast) or ``INNERPROBE_FUZZ=long`` (random, many examples; ``make test-slow`` runs it). With
``INNERPROBE_FUZZ_STATS=path.json`` each test adds its number of generated cases per target there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
}
settings.register_profile("fast", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
PROFILE = os.environ.get("INNERPROBE_FUZZ", "fast")
settings.load_profile(PROFILE if PROFILE in ("fast", "long") else "fast")


def examples(fast: int, long: int | None = None) -> settings:
    """A per-test example budget in the current profile."""
    return settings(max_examples=fast if PROFILE != "long" else (long or fast * 12))


CASES: Counter = Counter()


def count(target: str) -> None:
    CASES[target] += 1
    path = os.environ.get("INNERPROBE_FUZZ_STATS")
    if path:
        p = Path(path)
        old = json.loads(p.read_text()) if p.is_file() else {}
        old[target] = old.get(target, 0) + 1
        p.write_text(json.dumps(old, indent=1, sort_keys=True))
