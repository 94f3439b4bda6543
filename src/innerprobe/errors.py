"""One exception hierarchy. Every message says what was wrong and what would be right."""

from __future__ import annotations

import difflib
from typing import Iterable


class InnerprobeError(Exception):
    """Base class of every error innerprobe raises on purpose.

    ``hint`` is a one-line suggestion the CLI prints under the message.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # message and hint on one read
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SiteError(InnerprobeError):
    """A site string or object that does not name a real place in the model."""


class ModelError(InnerprobeError):
    """A model that cannot be loaded or does not fit what a method needs."""


class DataError(InnerprobeError):
    """Missing or malformed data (e.g. the Fashion-MNIST files)."""


class ConfigError(InnerprobeError):
    """A bad argument value: sigma, K, temperature, hypothesis text, ..."""


class CacheError(InnerprobeError):
    """A zoo cache entry that is corrupt or was made by a different recipe."""


def nearest(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The closest real names to ``word`` (difflib did-you-mean), best first."""
    candidates = [c for c in candidates if c]
    close = difflib.get_close_matches(word, candidates, n=n, cutoff=0.4)
    if len(close) < n:  # also names that contain or are contained in the word
        extra = [c for c in candidates if c not in close and (word and (word in c or c in word))]
        close += extra[: n - len(close)]
    return close


def did_you_mean(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """'did you mean: ...?' with the closest names, else real names to choose from (never an empty hint):
    those of the nearest kind (sharing the word's last dotted part, e.g. '*.relu'), else the first ones."""
    candidates = [str(c) for c in candidates if c]
    close = nearest(word, candidates, n)
    if close:
        return f"did you mean: {', '.join(repr(c) for c in close)}?"
    if not candidates:
        return "there are no names to choose from"
    tail = str(word).rsplit(".", 1)[-1]
    same_kind = [c for c in candidates if tail and c.rsplit(".", 1)[-1] == tail]
    pick, what = (same_kind, f"names ending in '.{tail}'") if same_kind else (candidates, "names")
    more = f" ({len(pick)} in all)" if len(pick) > n else ""
    return f"no close match; {what} here: {', '.join(repr(c) for c in pick[:n])}{more}"


def check(condition: bool, message: str, hint: str | None = None, kind: type = ConfigError) -> None:
    """Raise ``kind(message, hint)`` unless ``condition``."""
    if not condition:
        raise kind(message, hint)
