"""The HTML report: built from synthetic section.json files, self-contained, ordered, robust."""

from __future__ import annotations

import base64
import json
import re

import pytest

from innerprobe.errors import DataError
from innerprobe.report.html import build_report, collect_sections, fmt_value
from innerprobe.report.sections import Section
from innerprobe.results import Result, provenance


def _png(path, color=(0.2, 0.4, 0.8)):
    from innerprobe.report.plots import new_figure, savefig

    fig, ax = new_figure(size=(1.0, 1.0))
    ax.plot([0, 1], [0, 1], color=color)
    return savefig(fig, path, dpi=30)


def _sections(tmp_path):
    a = tmp_path / "study-b"
    s = Section("Beta study", order=50, paragraphs=["Uses `HookSession` and **bold** <script>alert(1)</script>"])
    s.table("Headline", ["metric", "mean", "ci95"], [["acc", 0.912345678, [0.9, 0.92]], ["flag", True, None]])
    s.figure(_png(a / "curve.png"), "A curve")
    s.figure("missing.png", "This one is not there")
    s.save(a)
    b = tmp_path / "nested" / "study-a"
    Section("Alpha study", order=10, paragraphs=["first"]).save(b)
    Section("Aardvark", order=50).save(tmp_path / "c")  # same order as Beta: sorted by title next
    return a, b


def test_report_embeds_figures_notes_missing_and_orders(tmp_path):
    _sections(tmp_path)
    out = build_report(tmp_path)
    assert out == tmp_path / "report.html"
    page = out.read_text()
    # ordering by (order, title): Alpha (10), Aardvark (50), Beta (50)
    pos = [page.index(f"<h2>{t}</h2>") for t in ("Alpha study", "Aardvark", "Beta study")]
    assert pos == sorted(pos)
    # the PNG is embedded byte for byte as a data URI
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m and base64.b64decode(m.group(1)) == (tmp_path / "study-b" / "curve.png").read_bytes()
    # a missing figure is a visible note, not a crash
    assert "Figure not found" in page and "missing.png" in page
    # self-contained: no external references of any kind
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "<script" not in page
    # user text is escaped; `code` and **bold** are the only markup
    assert "&lt;script&gt;" in page and "<code>HookSession</code>" in page and "<strong>bold</strong>" in page
    # table values formatted; TOC links to every section; footer lists the files and versions
    assert "0.9123" in page and "0.912345678" not in page
    for title in ("Alpha study", "Aardvark", "Beta study"):
        anchor = re.search(rf'<section class="card[^"]*" id="([^"]+)"><details open>\s*<summary><h2>{title}</h2>', page)
        anchor = anchor.group(1)
        assert f'href="#{anchor}"' in page
    import torch

    from innerprobe import __version__

    assert f"torch {torch.__version__}" in page and f"innerprobe {__version__}" in page
    assert "nested/study-a/section.json" in page and "missing figure" in page


def test_report_custom_out_and_title(tmp_path):
    _sections(tmp_path)
    out = build_report(tmp_path, tmp_path / "sub" / "page.html", title="My page")
    assert out.exists() and "<title>My page</title>" in out.read_text()


def test_result_files_without_section_get_a_plain_section(tmp_path):
    r = Result(
        "apex",
        data={"sigma_star": 0.25, "n": 3},
        tables={"curve": [{"sigma": 0.1, "acc": 0.9}, {"sigma": 0.2, "acc": 0.5}]},
        provenance=provenance(seed=7, model="digits-mlp"),
    )
    r.save(tmp_path / "run1" / "apex.json")
    # a result next to a section.json is covered by that section and not shown twice
    Section("Study with summary").save(tmp_path / "s")
    Result("study", data={"x": 1.0}, provenance=provenance(seed=0)).save(tmp_path / "s" / "summary.json")
    secs = collect_sections(tmp_path)
    titles = [s.section.title for s in secs]
    assert titles == ["Study with summary", "Result: apex (apex.json)"]
    page = build_report(tmp_path).read_text()
    assert "sigma_star" in page and "digits-mlp" in page and "s/summary.json" in page


def test_unreadable_section_is_shown_not_fatal(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "section.json").write_text("{not json")
    Section("Good").save(tmp_path / "good")
    page = build_report(tmp_path).read_text()
    assert "Unreadable section" in page and "<h2>Good</h2>" in page


def test_figure_outside_its_folder_is_refused(tmp_path):
    _png(tmp_path / "secret.png")
    sec = Section("Sneaky")
    sec.figures.append({"file": "../secret.png", "caption": "escape"})
    sec.save(tmp_path / "s")
    page = build_report(tmp_path / "s").read_text()
    assert "data:image/png" not in page and "Figure not found" in page


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(DataError, match="no section.json"):
        build_report(tmp_path)


def test_duplicate_titles_get_distinct_anchors(tmp_path):
    Section("Same").save(tmp_path / "a")
    Section("Same").save(tmp_path / "b")
    anchors = [s.anchor for s in collect_sections(tmp_path)]
    assert len(set(anchors)) == 2


def test_fmt_value():
    assert fmt_value(None) == "–" and fmt_value(True) == "yes" and fmt_value(0.0) == "0"
    assert fmt_value(1234.5678) == "1235" and fmt_value(1.5e-6) == "1.500e-06" and fmt_value([0.1, 0.25]) == "0.1, 0.25"
    assert fmt_value(3) == "3" and fmt_value("x") == "x"


def test_plots_do_not_touch_global_matplotlib_state(tmp_path):
    import matplotlib

    before_backend = matplotlib.get_backend()
    before_rc = dict(matplotlib.rcParams)
    from innerprobe.report import plots

    fig = plots.line_plot(
        {"a": [1, 2, 3], "b": [3, 2, 1]}, bands={"a": ([0.5, 1.5, 2.5], [1.5, 2.5, 3.5])}, hlines={"floor": 2.0}
    )
    plots.savefig(fig, tmp_path / "l.png")
    plots.savefig(
        plots.heatmap([[0.1, 0.9], [0.5, 0.2]], row_labels=["L0", "L1"], col_labels=["H0", "H1"]), tmp_path / "h.png"
    )
    plots.savefig(
        plots.image_grid([[[0.0, 1.0], [1.0, 0.0]]] * 3, titles=["a", "b", "c"], colors=["green", "red", "green"]),
        tmp_path / "g.png",
    )
    for name in ("l.png", "h.png", "g.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))
    assert matplotlib.get_backend() == before_backend
    after = dict(matplotlib.rcParams)
    assert {k for k in before_rc if before_rc[k] != after[k]} == set()


def test_plot_helpers_never_import_pyplot(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from innerprobe.report import plots; "
        f"plots.savefig(plots.line_plot({{'a': [1, 2]}}), {str(tmp_path / 'x.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "x.png").exists()


def test_section_json_written_by_studies_round_trips(tmp_path):
    sec = Section("RT", order=5).table("t", ["a"], [[1.5]]).figure(tmp_path / "f.png", "cap")
    path = sec.save(tmp_path)
    d = json.loads(path.read_text())
    assert d["figures"] == [{"file": "f.png", "caption": "cap"}] and d["order"] == 5
