"""Property-based fuzz of every CLI command and option (issue 14 items 5-9, issue 16.4).

Each case runs ``innerprobe.cli.main(argv)`` in-process on a tiny file model and a tiny input file,
with one or two options replaced by values drawn from a pool of bad ones (empty, negative, huge,
overflowing, NaN, 5000 characters, surrogates, directories, garbage bytes, pickles, 0-d arrays,
unwritable or invalid output paths). Every case must end in exit 0 (a result) or exit 2 with an
``error:`` line (plus an optional ``hint:`` line) -- never a raw traceback, never "aborted" /
exit 130 -- and leave no ``.tmp`` file behind. A value outside an option's domain must be refused
(exit 2), never replaced. Zoo models are never trained here (``zoo.load`` is stubbed).
Budget and profiles: see fuzz_support (``INNERPROBE_FUZZ=long`` for ``make test-slow``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import count, examples
from hypothesis import given
from hypothesis import strategies as st

MODEL_PY = """
import torch
from torch import nn
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
"""


class _Reached(Exception):
    """zoo.load was reached with a valid name and seed (it would train here)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzcli")
    (d / "model.py").write_text(MODEL_PY)
    r = np.random.default_rng(0)
    np.savez(d / "good.npz", x=r.random((6, 1, 8, 8)).astype("float32"), y=np.arange(6) % 10)
    (d / "dir.npy").mkdir()
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage \x00\xff" * 5)
    np.save(d / "pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "pickle.pt").write_bytes(pickle.dumps({"x": [1, 2]}))
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "zerod.npy", np.float32(1.0))
    np.save(d / "str.npy", np.array(["a", "b"]))
    np.save(d / "complex.npy", (r.random((3, 1, 8, 8)) + 1j).astype(np.complex64))
    np.save(d / "nan.npy", np.full((3, 1, 8, 8), np.nan, np.float32))
    np.save(d / "empty_batch.npy", np.zeros((0, 1, 8, 8), np.float32))
    (d / "afile").write_text("x")
    (d / "hyp_bad.txt").write_bytes(b"\xff\xfe edge \x00")
    (d / "report_in").mkdir()
    (d / "report_in" / "section.json").write_text('{"title": "t", "rows": 5, "figures": null}')
    mp = pytest.MonkeyPatch()
    mp.setenv("INNERPROBE_CACHE", str(d / "cache"))
    mp.setenv("INNERPROBE_PROGRESS", "0")
    mp.chdir(d)
    from innerprobe import zoo

    def fake_load(name, seed=0, **kw):
        from innerprobe.zoo.cache import entry_dir

        entry_dir(name, seed, "0" * 16)
        raise _Reached

    mp.setattr(zoo, "load", fake_load)
    fake = types.ModuleType("fuzz_fake_study")
    fake.run = lambda out, seeds=3, quick=False: _fake_study(out, seeds)
    mp.setitem(sys.modules, "fuzz_fake_study", fake)
    from innerprobe import studies

    mp.setattr(studies, "STUDIES", {"fuzz-study": "fuzz_fake_study:run"})
    yield d
    mp.undo()


def _fake_study(out, seeds):
    from innerprobe.results import Result

    return Result(kind="fuzz", data={"seeds": seeds})


M = "model.py:make"
BASE = {
    "perturb": ["perturb", "-m", M, "--data", "good.npz", "-o", "out/p", "-k", "2", "--sigmas", "0.1,1", "-n", "3"],
    "scan": [
        "scan",
        "-m",
        M,
        "--data",
        "good.npz",
        "-n",
        "3",
        "-k",
        "2",
        "--steps",
        "2",
        "--restarts",
        "1",
        "-o",
        "out/s",
    ],
    "patch": ["patch", "-m", M, "--data", "good.npz", "-H", "all", "-o", "out/h", "-n", "3"],
    "pullback": ["pullback", "-m", M, "--data", "good.npz", "-n", "2", "-o", "out/b", "--ascent-steps", "1"],
    "report": ["report", "report_in", "-o", "out/r.html"],
    "zoo list": ["zoo", "list", "--seed", "0"],
    "zoo train": ["zoo", "train", "digits-mlp", "--seed", "0"],
    "study": ["study", "fuzz-study", "-o", "out/st", "--seeds", "1"],
}

BAD_INT = ["0", "-1", "", "x", "1.5", "1000000000", "99999999999999999999999", "18446744073709551616"]
BAD_FLOAT = ["nan", "inf", "-inf", "1e309", "-1", "x", ""]
BAD_STR = ["", " ", "nope", ",", "a" * 5000, "\udcff", "0:1:0", "-1"]
BAD_IN = [
    "",
    "dir.npy",
    "garbage.npy",
    "pickle.npy",
    "pickle.pt",
    "empty.npy",
    "zerod.npy",
    "str.npy",
    "complex.npy",
    "nan.npy",
    "empty_batch.npy",
    "missing.npz",
    "afile",
    "a" * 300 + ".npy",
    "hyp_bad.txt",
]
BAD_OUT = ["", "afile/sub", "a" * 300, "afile", "/proc/innerprobe-fuzz", "report_in/section.json/x"]
BAD_MODEL = [
    "",
    "nope",
    "digits-mlp@x",
    "digits-mlp@99999999999999999999999",
    "a" * 5000,
    "model.py",
    "model.py:nope",
    "dir.npy",
    "digits-mlp@-1",
]

INPUT_OPTS = {"--data", "--weights", "--hypothesis", "-H", "--baseline"}
OUT_OPTS = {"--out", "-o"}
MODEL_OPTS = {"--model", "-m"}


def _command(name: str):
    import typer

    from innerprobe.cli import app

    cmd = typer.main.get_command(app)
    for part in name.split():
        cmd = cmd.commands[part]
    return cmd


def _options(name: str) -> list:
    return [p for p in _command(name).params if p.param_type_name == "option" and "--help" not in p.opts]


def _pool(param) -> list[str]:
    opts = set(param.opts)
    if opts & OUT_OPTS:
        return BAD_OUT
    if opts & MODEL_OPTS:
        return BAD_MODEL
    if opts & INPUT_OPTS:
        return BAD_IN + ["all", "edge nope -> nope"]
    desc = getattr(param, "type_descriptor", None)
    t = str(desc.annotation if desc is not None else getattr(param, "type", "")).lower()
    if "int" in t:
        return BAD_INT
    if "float" in t:
        return BAD_FLOAT
    return BAD_STR + BAD_IN[:4]


ZERO_OK = {"--ascent-steps", "--seed", "--threshold", "--position"}  # options whose domain includes 0
SIGNED = {"--position"}  # negative values count from the end


def must_refuse(command: str, param, value: str) -> bool:
    """Whether ``value`` lies outside the option's domain, so that it must be refused (exit 2), never replaced."""
    opts = set(param.opts)
    long = next((o for o in param.opts if o.startswith("--")), "")
    pool = _pool(param)
    if value in ("", " ") or value == "a" * 5000:
        return True
    if pool is BAD_OUT:
        return value != "afile" or command != "report"
    if pool is BAD_MODEL:
        return True
    if opts & {"--data", "--weights"}:
        return value in BAD_IN
    if pool is BAD_INT:
        if long in SIGNED:
            return value in ("x", "1.5")
        return (
            value in ("-1", "x", "1.5", "99999999999999999999999", "18446744073709551616")
            or (value == "0" and long not in ZERO_OK)
            or (value == "1000000000" and long == "--samples")
        )
    if pool is BAD_FLOAT:
        return value in ("nan", "inf", "-inf", "1e309", "x")
    return False


@st.composite
def argvs(draw, name: str):
    """(argv, whether it must be refused): the command's base call with one or two options replaced."""
    argv, refuse = list(BASE[name]), False
    params = _options(name)
    for param in draw(st.lists(st.sampled_from(params), min_size=1, max_size=2, unique_by=lambda p: p.name)):
        flag = param.opts[-1] if len(param.opts[-1]) > 2 else param.opts[0]
        if param.is_flag:
            argv.append(draw(st.sampled_from(param.opts + list(param.secondary_opts))))
            continue
        value = draw(st.sampled_from(_pool(param)))
        _set(argv, param.opts, flag, value)
        refuse = refuse or must_refuse(name, param, value)
    return argv, refuse


def _set(argv: list[str], names, flag: str, value: str) -> None:
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            argv[i + 1] = value
            return
    argv += [flag, value]


class _Timeout(Exception):
    pass


def run_cli(argv: list[str], seconds: int = 60) -> tuple[int | None, str, str, BaseException | None]:
    """(exit code, stdout, stderr, escaped exception) of one in-process CLI call."""
    from innerprobe.cli import main

    out, err = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise _Timeout(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc, exc = main(argv), None
    except _Reached:
        rc, exc = 0, None
    except BaseException as e:  # noqa: BLE001 - anything escaping main is a raw traceback
        rc, exc = None, e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue(), err.getvalue(), exc


def check_case(argv: list[str], world: Path) -> int:
    rc, out, err, exc = run_cli(argv)
    shown = [a if len(a) < 60 else a[:20] + f"...({len(a)} chars)" for a in argv]
    assert exc is None, f"raw {type(exc).__name__} escaped for {shown}: {str(exc)[:300]}"
    assert rc != 130 and "aborted" not in err, f"'aborted' / exit 130 for {shown}: {err[-300:]}"
    assert "Traceback" not in err + out, f"traceback printed for {shown}"
    assert rc in (0, 1, 2), f"exit {rc} for {shown}"
    if rc == 2 and "Usage:" not in err:  # an innerprobe error: 'error: ...' plus at most a hint line
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines and lines[-1].startswith(("error:", "hint:")), f"no error line for {shown}: {err[-300:]}"
        assert sum(ln.startswith("error:") for ln in lines) == 1
    leftovers = [p for p in world.rglob("*.tmp*") if p.is_file()] + [p for p in world.rglob(".tmp*")]
    assert not leftovers, f"left behind {leftovers[:3]} for {shown}"
    return rc


@pytest.mark.parametrize("name", list(BASE))
def test_base_commands_run(world, name):
    count(f"cli:{name}")
    rc = check_case(list(BASE[name]), world)
    assert rc in (0, 1) or name == "zoo train", f"{name} base case failed"


BUDGET = {"perturb": 8, "scan": 5, "patch": 6, "pullback": 6, "report": 5, "zoo list": 4, "zoo train": 4, "study": 4}


@pytest.mark.parametrize("name", list(BASE))
def test_fuzz_command(world, name):
    @examples(BUDGET[name], BUDGET[name] * 25)
    @given(case=argvs(name))
    def prop(case):
        argv, refuse = case
        count(f"cli:{name}")
        rc = check_case(argv, world)
        if refuse:  # out of the option's domain: refused by name, never silently replaced or ignored
            assert rc == 2, f"exit {rc}: an out-of-range value was accepted for {[a[:40] for a in argv]}"

    prop()


# ----------------------------------------------------------------------------- the issue's own cases
P = ["perturb", "-m", M, "--data", "good.npz", "-o", "out/p", "-k", "2", "--sigmas", "0.1,1", "-n", "3"]
S = ["scan", "-m", M, "--data", "good.npz", "-n", "3", "-k", "2", "--steps", "2", "--restarts", "1"]
H = ["patch", "-m", M, "--data", "good.npz", "-o", "out/h", "-n", "3"]
B = ["pullback", "-m", M, "--data", "good.npz", "-n", "2", "-o", "out/b", "--ascent-steps", "1"]
LONG = "a" * 300
ISSUE_CASES = {  # id: (argv, substring of the error line)
    # 14.5: out-of-range options refused, never replaced or ignored
    "scan -k 0": (S + ["-k", "0"], "--samples"),
    "scan --reference unknown": (S + ["--reference", "digits-rnn"], "no class reference"),
    "scan --reference empty": (S + ["--reference", ""], "no class reference"),
    "scan --method natural without a reference": (S + ["--method", "natural"], "needs a class reference"),
    "patch --ig-steps 0": (H + ["--edges", "--ig-steps", "0"], "--ig-steps"),
    "patch --top -1": (H + ["--edges", "--top", "-1"], "--top"),
    "perturb -o ''": (P + ["-o", ""], "--out is empty"),
    "perturb --data ''": (P + ["--data", ""], "--data is empty"),
    "perturb complex inputs": (P + ["--data", "complex.npy"], "complex"),
    # 14.6: unwritable or invalid --out in every writing command; report --out DIR
    "perturb -o through a file": (P + ["-o", "afile/sub"], "afile"),
    "scan -o name too long": (S + ["-o", LONG], "bytes long"),
    "patch -o a file": (H + ["-H", "all", "-o", "afile"], "is a file"),
    "pullback -o unwritable": (B + ["-o", "/proc/innerprobe-x"], ""),
    "study -o through a file": (["study", "fuzz-study", "-o", "afile/x"], "afile"),
    "report --out a folder": (["report", "report_in", "--out", "report_in"], "is a folder"),
    "report --out ''": (["report", "report_in", "--out", ""], "--out is empty"),
    "demo -o through a file": (["demo", "--quick", "-o", "afile/x"], "afile"),
    # 14.7: unreadable inputs are one-line errors, never 'aborted' / exit 130
    "perturb --data a folder": (P + ["--data", "dir.npy"], "folder"),
    "scan --data garbage": (S + ["--data", "garbage.npy"], "cannot read"),
    "patch --data pickle": (H + ["-H", "all", "--data", "pickle.npy"], "cannot read"),
    "perturb --data 0-d": (P + ["--data", "zerod.npy"], "no inputs"),
    "perturb --data strings": (P + ["--data", "str.npy"], "not numbers"),
    "perturb --data empty file": (P + ["--data", "empty.npy"], "--data"),
    "pullback --data empty batch": (B + ["--data", "empty_batch.npy"], "no inputs"),
    # 14.9: overflowing seeds, huge K, 5000-character specs, --indices ','
    "zoo seed overflow in spec": (["pullback", "-m", "digits-mlp@99999999999999999999999"], "seed"),
    "--seed overflow": (P + ["--seed", "18446744073709551616"], "--seed"),
    "huge K": (P + ["-k", "1000000000"], "--samples"),
    "5000-char model": (["perturb", "-m", "a" * 5000, "-o", "out/p"], "5000 characters"),
    "pullback --indices ,": (B + ["--indices", ","], "--indices"),
    "non-UTF8 hypothesis file": (H + ["-H", "hyp_bad.txt"], ""),
    "--graph hf on a non-HF model": (H + ["-H", "all", "--graph", "hf"], ""),
    # 16.4: a bad seed is a bad seed
    "bad seed": (["perturb", "-m", "digits-mlp@x", "-o", "out/p"], "bad seed 'x'"),
    # 14.13: a wrong site with no close match lists real names
    "unknown site": (P + ["--sites", "no_such_layer.relu"], "no module named"),
}


@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_issue_cases_are_one_line_refusals(world, case):
    argv, want = ISSUE_CASES[case]
    count("cli:issue-cases")
    rc, out, err, exc = run_cli(argv)
    assert exc is None, f"raw {type(exc).__name__}: {exc}"
    assert rc == 2, f"exit {rc}: {err[-300:]} {out[-200:]}"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    error = next(ln for ln in lines if ln.startswith("error:"))
    assert want in error and len(error) < 400 and "aborted" not in err
    if case == "unknown site":
        assert "'0', '1', '2', '3'" in err  # the model's real names, not "no similar names"
    assert not list(world.rglob(".tmp*")) and not list(world.rglob("*.tmp"))


def test_patch_edges_without_labels_says_why_instead_of_nan(world):
    np.save(world / "nolabels.npy", np.random.default_rng(0).random((6, 1, 8, 8)).astype("float32"))
    rc, out, err, exc = run_cli(
        H + ["--data", "nolabels.npy", "--edges", "--ig-steps", "2", "--top", "3", "-o", "out/e1"]
    )
    assert exc is None and rc == 0, err
    assert "EAP / EAP-IG not computed" in out and "nan" not in out
    rc, out, err, exc = run_cli(H + ["--edges", "--ig-steps", "2", "--top", "3", "-o", "out/e2"])  # good.npz has 'y'
    assert rc == 0 and "EAP-IG" in out and "nan" not in out


def test_flags_negate_and_counts_share_short_names(world):
    assert run_cli(["zoo", "list", "--no-json", "--seed", "0"])[0] == 0
    assert run_cli(B)[0] == 0  # pullback: --data is the file, -n / --inputs the count, as in every command
