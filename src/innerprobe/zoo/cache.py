"""The zoo cache: ``$INNERPROBE_CACHE`` (default ``~/.cache/innerprobe``)/<recipe>/<seed>-<hash>/.

An entry holds ``model.safetensors`` and ``card.json``. The hash covers the recipe name, its
version and every parameter (defaults merged with overrides), so a changed recipe or override
is a different entry. Entries are written to a temporary folder and renamed into place, so
processes sharing the cache never see half an entry; a per-entry ``flock`` makes a second
process wait for a model the first is training instead of training it again.

Loading reads safetensors only (never pickle). An entry is *invalid* -- and retrained, or refused
with :class:`~innerprobe.errors.CacheError` -- when its card is unreadable or names another
recipe/fingerprint/seed, its weights file is unreadable or differs from the checksum on the card,
or its tensors do not match the model's keys and shapes. A card without a ``weights_sha256``
checksum is invalid too: the checksum is required, never optional.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from ..core.checks import check_seed, expand_path
from ..errors import CacheError

CARD = "card.json"
WEIGHTS = "model.safetensors"


def cache_root() -> Path:
    return expand_path(os.environ.get("INNERPROBE_CACHE") or Path.home() / ".cache" / "innerprobe")


def checked_root() -> Path:
    """:func:`cache_root`, refused with CacheError when it names something that is not a folder."""
    root = cache_root()
    try:
        bad = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    except OSError as e:  # e.g. a name too long for the file system
        raise CacheError(
            f"the zoo cache {str(root)[:200]} cannot be used: {e.strerror or e}", hint=_ROOT_HINT
        ) from None
    if bad is not None:
        raise CacheError(f"the zoo cache {root} cannot be a folder: {bad} is a file", hint=_ROOT_HINT)
    return root


_ROOT_HINT = "point INNERPROBE_CACHE at a folder (it is created if missing), or unset it for ~/.cache/innerprobe"


def fingerprint(recipe: str, version: int, params: dict) -> str:
    blob = json.dumps({"recipe": recipe, "version": version, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(recipe: str, seed: int, fp: str) -> Path:
    """``<cache>/<recipe>/<seed>-<fingerprint>``; the seed is checked (0 .. 2**63 - 1) first."""
    return checked_root() / recipe / f"{check_seed(seed)}-{fp}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<entry>.lock`` (waits while another process trains it)."""
    lock = path.parent / (path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise CacheError(
            f"cannot write to the zoo cache at {path.parent}: {e.strerror or e}", hint=_ROOT_HINT
        ) from None
    with f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: atomic renames still keep entries whole
            pass
        try:
            yield
        finally:
            try:
                import fcntl

                fcntl.flock(f, fcntl.LOCK_UN)
            except ImportError:  # pragma: no cover
                pass


def read_card(path: Path) -> dict:
    """The card of entry ``path``; CacheError if missing or unreadable."""
    try:
        card = json.loads((path / CARD).read_text())
    except FileNotFoundError:
        raise CacheError(f"cache entry {path} has no {CARD}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"cache entry {path}: {CARD} is unreadable ({e})") from None
    if not isinstance(card, dict):
        raise CacheError(f"cache entry {path}: {CARD} is not a JSON object")
    return card


def check_card(card: dict, path: Path, *, recipe: str, fp: str, seed: int) -> None:
    for key, want in (("recipe", recipe), ("fingerprint", fp), ("seed", int(seed))):
        if card.get(key) != want:
            raise CacheError(
                f"cache entry {path} was made by a different recipe: card {key}={card.get(key)!r}, expected {want!r}"
            )


def load_weights(path: Path, model: nn.Module, card: dict) -> nn.Module:
    """Load ``path/model.safetensors`` into ``model`` after checking checksum, keys and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wfile = path / WEIGHTS
    if not wfile.is_file():
        raise CacheError(f"cache entry {path} has no {WEIGHTS}")
    want = card.get("weights_sha256")
    if not isinstance(want, str) or len(want) != 64:  # a card without its checksum cannot vouch for the weights
        raise CacheError(f"cache entry {path}: {CARD} has no weights_sha256 checksum, so its weights cannot be trusted")
    if sha256_file(wfile) != want:
        raise CacheError(f"cache entry {path}: {WEIGHTS} does not match the checksum on its card (truncated or edited)")
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CacheError(f"cache entry {path}: {WEIGHTS} is unreadable ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CacheError(
            f"cache entry {path}: weights do not fit the recipe's model (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if bad:
        raise CacheError(f"cache entry {path}: tensor shapes do not fit the recipe's model ({'; '.join(bad[:3])})")
    model.load_state_dict(state, strict=True)
    return model


def write_entry(path: Path, model: nn.Module, card: dict) -> dict:
    """Write weights + card atomically to ``path`` (replacing an old entry); returns the final card."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(
            state, str(tmp / WEIGHTS), metadata={"innerprobe-zoo": f"{card.get('recipe')} seed {card.get('seed')}"}
        )
        card = dict(
            card, weights_sha256=sha256_file(tmp / WEIGHTS), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        (tmp / CARD).write_text(json.dumps(card, indent=1))
        if path.exists():  # move the old (invalid) entry aside first; rename is atomic
            trash = path.parent / f".trash-{path.name}-{os.getpid()}-{time.time_ns()}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def list_entries(recipe: str) -> list[tuple[int, str, Path]]:
    """(seed, fingerprint, path) of every entry folder of ``recipe`` in the cache."""
    root = cache_root() / recipe
    out = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and "-" in p.name:
                s, fp = p.name.split("-", 1)
                if s.isdigit():
                    out.append((int(s), fp, p))
    return out
