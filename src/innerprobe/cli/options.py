"""Option checks shared by every command: one output-path check, counts and ranges checked before
anything is allocated, and values out of range refused (never replaced by a default).

Every function raises :class:`~innerprobe.errors.ConfigError` with the option's CLI name and a
hint written in CLI syntax, so ``innerprobe cmd --opt bad`` prints one line plus a hint and exits
with status 2 (docs/cli.md, "Options").
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.checks import SEED_MAX, expand_path
from ..errors import ConfigError

NAME_MAX = 255  # bytes per path component on the file systems innerprobe runs on
MAX_SAMPLES = 100_000  # noisy passes per input and sigma: far beyond any useful K
MAX_COUNT = 10_000_000  # inputs, pairs, steps: beyond this a typo is likelier than intent


def out_path(value, option: str = "--out", *, kind: str = "dir") -> Path:
    """A writable output location: a folder (``kind='dir'``) or a file to create (``kind='file'``).

    Refuses, before any work starts: an empty value, a name component longer than the file system
    allows, a path through an existing file, a folder where a file is wanted (and the reverse), and
    a location whose nearest existing folder is not writable.
    """
    text = "" if value is None else str(value)
    if not text.strip():
        raise ConfigError(
            f"{option} is empty", hint=f"give a {'folder' if kind == 'dir' else 'file'} name, e.g. {option} out/run1"
        )
    if "\x00" in text:
        raise ConfigError(f"{option} contains a NUL byte", hint=f"pass a plain path, e.g. {option} out/run1")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{option} {text!r} is not valid text (a lone surrogate)", hint=f"pass a plain path, e.g. {option} out/run1"
        ) from None
    path = expand_path(text)
    long = [part for part in path.parts if len(part.encode()) > NAME_MAX]
    if long:
        raise ConfigError(
            f"{option}: the name {long[0][:30]}... is {len(long[0].encode())} bytes long; "
            f"the file system allows {NAME_MAX}",
            hint="use a shorter name",
        )
    _check_existing(path, option, kind)
    return path


def _check_existing(path: Path, option: str, kind: str) -> None:
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise ConfigError(f"{option} {path} is a file, not a folder", hint=f"name a folder, e.g. {option} {path}.d")
        if kind == "file" and path.is_dir():
            raise ConfigError(
                f"{option} {path} is a folder, not a file", hint=f"name a file, e.g. {option} {path / 'report.html'}"
            )
    parent = path if path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(
            f"{option} {path} goes through {parent}, which is a file", hint="choose a path below a folder"
        )
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {target} is not writable", hint="choose a folder you can write to")


def count(value, option: str, *, lo: int = 1, hi: int = MAX_COUNT, label: str = "") -> int:
    """An integer option in ``[lo, hi]``, refused otherwise (``--samples 0``, ``-k 1000000000``)."""
    name = f"{option} {label}".strip()
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        rng = f"at least {lo}" if value < lo else f"at most {hi:,}"
        raise ConfigError(
            f"{name} must be {rng}, got {value}", hint=f"e.g. {option} {max(lo, 1) if value < lo else hi}"
        )
    return value


def seed(value, option: str = "--seed") -> int:
    """A seed option: an integer from 0 to 2**63 - 1."""
    return count(value, option, lo=0, hi=SEED_MAX)


def real(value, option: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite float option within its range (``nan``, ``inf`` and out-of-range values refused)."""
    import math

    if value is None or not math.isfinite(float(value)):
        raise ConfigError(f"{option} must be a finite number, got {value}")
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{option} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{option} must be <= {hi}, got {v}")
    return v


def text(value, option: str) -> str:
    """A non-empty text option (``--data ""`` is refused, not ignored)."""
    if value is not None and not str(value).strip():
        raise ConfigError(f"{option} is empty", hint=f"leave {option} out for its default, or give a value")
    return value


# ----------------------------------------------------------------------------- one grammar
# Each long option name has one meaning and one domain in every command (issue 16.4). The checks run
# as click callbacks, so a bad value is refused before the command starts any work.
def _counts(lo: int, hi: int = MAX_COUNT, label: str = ""):
    return lambda v, opt, cmd: count(v, opt, lo=lo, hi=hi, label=label) if isinstance(v, int) else v


def _out(v, opt, cmd):
    return out_path(v, opt, kind="file" if cmd == "report" else "dir")


CHECKS = {
    "--samples": _counts(1, MAX_SAMPLES, "(K)"),
    "--inputs": _counts(1),
    "--pairs": _counts(1),
    "--restarts": _counts(1),
    "--steps": _counts(1),
    "--seeds": _counts(1, 1000),
    "--chunk-rows": _counts(1),
    "--top": _counts(1),
    "--ig-steps": _counts(1, 10_000),
    "--ascent-steps": _counts(0, 10_000),
    "--workers": _counts(1, 4096),
    "--seed": lambda v, opt, cmd: seed(v, opt) if isinstance(v, int) else v,
    "--tau": lambda v, opt, cmd: real(v, opt, lo=0.0, hi=1.0, lo_open=True),
    "--threshold": lambda v, opt, cmd: real(v, opt, lo=0.0, hi=1.0),
    "--temperature": lambda v, opt, cmd: real(v, opt, lo=0.0),
    "--out": _out,
}
TEXT = (
    "--model",
    "--data",
    "--weights",
    "--sites",
    "--sigmas",
    "--hypothesis",
    "--baseline",
    "--counterfactual",
    "--title",
    "--indices",
    "--target",
    "--shape",
    "--method",
    "--noise",
    "--rule",
    "--gate",
    "--pool",
    "--scale",
    "--split",
    "--graph",
    "--set",
    "--address",
    "--executor",
)


def _callback(check, old, cmd_name: str):
    def callback(ctx, param, value):
        if old is not None:
            value = old(ctx, param, value)
        if value is None:
            return value
        opt = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if item is not None:
                check(item, opt, cmd_name)
        return value

    return callback


def apply_grammar(command, name: str = "") -> None:
    """Attach the shared option checks to every command below ``command`` (a click group)."""
    for sub_name, sub in getattr(command, "commands", {}).items():
        apply_grammar(sub, sub_name)
    for param in getattr(command, "params", []):
        if param.param_type_name != "option" or getattr(param, "_innerprobe_checked", False):
            continue
        long = next((o for o in param.opts if o.startswith("--")), None)
        if param.is_flag:
            _negatable(param, long)
            continue
        check = CHECKS.get(long) or ((lambda v, opt, cmd: text(v, opt)) if long in TEXT else None)
        if check is None:
            continue
        param.callback = _callback(check, param.callback, name)
        param._innerprobe_checked = True


def _negatable(param, long: str | None) -> None:
    """Booleans read as ``--flag/--no-flag`` in every command (``--help`` and ``--version`` stay single),
    shown without a ``<bool>`` value placeholder (a flag takes no value)."""
    param.metavar = ""
    if long in (None, "--help", "--version") or param.secondary_opts or not getattr(param, "is_bool_flag", True):
        return
    param.secondary_opts = ["--no-" + long[2:]]


SHORT = {"-o": "--out", "-m": "--model", "-H": "--hypothesis", "-c": "--counterfactual", "-t": "--target"}


def refuse_empty(argv: list[str]) -> None:
    """``-o ""`` / ``--data ""`` refused before parsing: typer turns an empty path into '.' (the current folder)."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--"):
            option, given = name, value
        elif i + 1 < len(argv) and arg in (*TEXT, "--out", *SHORT):
            option, given = arg, argv[i + 1]
        else:
            continue
        option = SHORT.get(option, option)
        if option in (*TEXT, "--out") and not given.strip():
            raise ConfigError(
                f"{option} is empty",
                hint=_EMPTY_HINT.get(option, f"leave {option} out for its default, or give a value"),
            )


_EMPTY_HINT = {
    "--out": "name an output folder, e.g. --out out/run1 (the current folder is never assumed)",
    "--model": "a zoo name (innerprobe zoo list), path/file.py:factory or a local Hugging Face folder",
}
