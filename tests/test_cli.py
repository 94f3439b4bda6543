"""The command line: help everywhere, one-line errors, python -m, demo that survives a failing study."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import typer

from innerprobe import __version__, studies
from innerprobe.cli import app, main


def _walk(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    if getattr(cmd, "commands", None):  # a group (click's or typer's vendored click)
        for name, sub in cmd.commands.items():
            yield from _walk(sub, path + (name,))


def _all_commands():
    return list(_walk(typer.main.get_command(app)))


def test_expected_commands_are_registered():
    names = {p[0] for p, _ in _all_commands() if p}
    assert {"report", "demo", "study"} <= names


@pytest.mark.parametrize("path", [p for p, _ in _all_commands()], ids=lambda p: " ".join(p) or "innerprobe")
def test_every_help_exits_zero_and_says_something(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and len(out.split()) > 20, out


def test_every_command_and_option_has_help_text():
    for path, cmd in _all_commands():
        if not path:
            continue
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no help"
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert (p.help or "").strip(), f"{' '.join(path)} {p.opts} has no help"


def test_python_m_version():
    r = subprocess.run([sys.executable, "-m", "innerprobe", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"innerprobe {__version__}"


def test_wrong_study_name_is_one_line_plus_hint_exit_2(monkeypatch):
    r = subprocess.run(
        [sys.executable, "-m", "innerprobe", "study", "no-such-study", "--out", "unused"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "error: unknown study 'no-such-study'" and lines[1].startswith("hint: ") and len(lines) == 2
    assert "Traceback" not in r.stderr + r.stdout


def test_wrong_study_name_suggests_registered_names(monkeypatch, capsys):
    monkeypatch.setattr(studies, "STUDIES", {"apex-transition": "x:y", "pullback-sanity": "x:y"})
    assert main(["study", "apex-transiton", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "'apex-transition'" in err and "studies: apex-transition, pullback-sanity" in err


def test_report_on_missing_folder_is_one_clean_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report folder") and "Traceback" not in err


def test_report_command_writes_page(tmp_path, capsys):
    from innerprobe.report.sections import Section

    Section("Hello section").save(tmp_path / "a")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    assert "Hello section" in (tmp_path / "r.html").read_text()


FAKE_STUDIES = textwrap.dedent("""
    from innerprobe.report.sections import Section
    from innerprobe.core.stats import t_interval
    from innerprobe.results import Result, provenance, row

    CALLS = []

    def good(out, seeds=3, quick=False):
        CALLS.append(("good", seeds, quick))
        r = Result("fake", data={"seeds": seeds, "quick": quick}, provenance=provenance(seed=0))
        r.save(out / "summary.json")
        Section("Good fake study", order=40, paragraphs=[f"seeds={seeds}"]).save(out)
        return Result("fake", rows=[row("acc", t_interval([0.9, 0.925][:seeds]), model="m", condition={"k": 2},
                                        seeds=list(range(seeds)))])

    def bad(out, seeds=3, quick=False):
        CALLS.append(("bad", seeds, quick))
        raise RuntimeError("boom: something broke inside the study")

    def after(out, seeds=3, quick=False):
        CALLS.append(("after", seeds, quick))
        Section("Study after the failure", order=60).save(out)
""")


def _fake_registry(tmp_path, monkeypatch):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fake_ip_studies.py").write_text(FAKE_STUDIES)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sys.modules.pop("fake_ip_studies", None)
    monkeypatch.setattr(
        studies,
        "STUDIES",
        {"good": "fake_ip_studies:good", "bad": "fake_ip_studies:bad", "after": "fake_ip_studies:after"},
    )
    import innerprobe.cli.demo as rcli

    def no_zoo(run, *, quick):  # no training in the fast test
        run.steps.append(rcli.Step("model", "fake-model", seconds=0.0))

    monkeypatch.setattr(rcli, "_zoo_step", no_zoo)


def test_demo_records_failing_study_and_goes_on(tmp_path, monkeypatch, capsys):
    _fake_registry(tmp_path, monkeypatch)
    out = tmp_path / "demo"
    (out / "bad").mkdir(parents=True)
    (out / "bad" / "section.json").write_text(json.dumps({"title": "stale from an earlier run"}))
    code = main(["demo", "--quick", "--seeds", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # non-zero because a study failed
    assert captured.out.strip().splitlines()[-1] == str(out / "report.html")
    import fake_ip_studies

    assert fake_ip_studies.CALLS == [("good", 2, True), ("bad", 2, True), ("after", 2, True)]
    page = (out / "report.html").read_text()
    assert "Good fake study" in page and "Study after the failure" in page
    assert "FAILED: study bad" in page and "boom: something broke inside the study" in page
    assert "stale from an earlier run" not in page
    assert "FAILED study bad" in captured.err and "Traceback" not in captured.err
    run = json.loads((out / "demo-run" / "section.json").read_text())
    statuses = {row[1]: row[2] for row in run["tables"][0]["rows"]}
    assert statuses == {"fake-model": "ok", "good": "ok", "bad": "failed", "after": "ok"}
    # the failure section sorts before the studies, right after the run summary
    assert page.index("Demo run") < page.index("FAILED: study bad") < page.index("Good fake study")


def test_demo_all_ok_exits_zero(tmp_path, monkeypatch, capsys):
    _fake_registry(tmp_path, monkeypatch)
    monkeypatch.setattr(studies, "STUDIES", {"good": "fake_ip_studies:good"})
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "report.html").exists()
    assert json.loads((tmp_path / "d" / "good" / "summary.json").read_text())["data"] == {"seeds": 3, "quick": False}


def test_demo_and_study_reject_zero_seeds(tmp_path, monkeypatch, capsys):
    _fake_registry(tmp_path, monkeypatch)
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert main(["study", "good", "--seeds", "0", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.count("--seeds must be at least 1") == 2


def test_study_command_runs_registered_study(tmp_path, monkeypatch, capsys):
    _fake_registry(tmp_path, monkeypatch)
    assert main(["study", "good", "--quick", "--seeds", "1", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "study good finished" in out and "innerprobe report" in out
    assert "  acc (m; k 2): 0.9 (1 seed)" in out
    assert (tmp_path / "s" / "section.json").exists()


def test_usage_errors_are_short_and_exit_2(capsys):
    assert main(["report", "--no-such-option"]) == 2
    assert main(["study"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --no-such-option" in err and "Missing argument 'NAME'" in err and "Traceback" not in err
