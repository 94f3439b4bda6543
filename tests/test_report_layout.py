"""The report as a reader meets it: rows rendered with labels, one seed without a CI, folding, distinct run titles,
malformed sections shown not fatal, small embedded images, and bad output paths refused in one line (docs/results.md).
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from innerprobe.core.stats import CI
from innerprobe.errors import ConfigError
from innerprobe.report.html import FOLD_ROWS, build_report, clean_prose, collect_sections
from innerprobe.report.sections import Section
from innerprobe.results import row


def test_rows_render_with_labels_and_one_seed_shows_no_interval(tmp_path):
    s = Section(
        "Rows",
        rows=[
            row(
                "target_share_ratio",
                CI(1.92, 1.56, 2.36, 0.95, "t", 6),
                model="digits-mlp",
                condition={"noise": "all", "sigma": 64},
                seeds=[0, 1, 2],
            ),
            row("escape_noise_median", 0.25, model="digits-cnn", seeds=[0], n=1),
        ],
    )
    s.save(tmp_path / "s")
    page = build_report(tmp_path).read_text()
    assert "Target share ratio" in page and "noise all, sigma 64" in page
    assert "[1.56, 2.36]" in page and "1 seed" in page and "3 seeds, n = 6" in page
    Section("One seed", rows=[row("escape_noise_median", 0.25, seeds=[0])]).save(tmp_path / "s")
    page = build_report(tmp_path).read_text()
    assert "1 seed" in page and "95% CI" not in page
    assert "target_share_ratio" not in page.split("<footer>")[0].split("<main>")[1]  # identifiers become labels


def test_prose_never_shows_python_missing_values():
    text, n = clean_prose("Median escape noise None, entropy -0.00, half-way at sigma = nan, CI [nan, nan]")
    assert n == 4 and "None" not in text and "nan" not in text and "-0.00" not in text
    assert "entropy 0.00" in text and "n/a" in text
    assert clean_prose("sigma -0.5 and Nonesuch") == ("sigma -0.5 and Nonesuch", 0)


def test_long_tables_and_many_figures_are_folded(tmp_path):
    from innerprobe.report.plots import new_figure, savefig

    s = Section("Fold")
    s.table("long", ["i"], [[i] for i in range(FOLD_ROWS + 1)])
    s.table("short", ["i"], [[1]])
    for i in range(6):
        fig, ax = new_figure(size=(1.0, 1.0))
        ax.plot([0, 1], [0, i])
        s.figure(savefig(fig, tmp_path / "s" / f"f{i}.png", dpi=30))
    s.save(tmp_path / "s")
    page = build_report(tmp_path).read_text()
    assert re.search(r'<details class="fold"><summary>long <span class="note">\(13 rows\)', page)
    assert "<caption>short</caption>" in page and "2 more figures</summary>" in page
    assert page.count("<img ") == 6


def test_runs_with_one_title_are_told_apart(tmp_path):
    for i, model in enumerate(["digits-mlp", "digits-cnn", "digits-mlp@1"]):
        Section("APEX perturb", run={"model": model, "created": f"2026-12-01 10:0{i}:00"}).save(tmp_path / f"r{i}")
    secs = collect_sections(tmp_path)
    titles = [s.display_title for s in secs]
    assert len(set(titles)) == 3 and all(t.startswith("APEX perturb (") for t in titles)
    assert len({s.anchor for s in secs}) == 3


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"title": "x", "rows": 5}',
        '{"title": 3}',
        '{"order": "a"}',
        '{"tables": [5]}',
        '{"rows": [{"value": 1}]}',
        '{"run": 5}',
        "\xff\xfe",
    ],
)
def test_malformed_sections_are_shown_not_fatal(tmp_path, content):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "section.json").write_bytes(content.encode("latin-1"))
    Section("Good").save(tmp_path / "good")
    page = build_report(tmp_path).read_text()
    assert "Unreadable section" in page and "<h2>Good</h2>" in page


def test_null_lists_are_empty(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "section.json").write_text(json.dumps({"title": "Nulls", "figures": None, "tables": None}))
    assert "<h2>Nulls</h2>" in build_report(tmp_path).read_text()


def test_bad_output_paths_are_one_line_errors_and_leave_nothing(tmp_path):
    Section("S").save(tmp_path / "s")
    with pytest.raises(ConfigError, match="empty"):
        build_report(tmp_path, "")
    with pytest.raises(ConfigError, match="is a folder"):
        build_report(tmp_path, tmp_path / "s")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        build_report(tmp_path, tmp_path / "file" / "r.html")
    assert not list(tmp_path.rglob(".*.tmp"))


def test_surrogate_in_title_does_not_crash(tmp_path):
    Section("S").save(tmp_path / "s")
    out = build_report(tmp_path, title="bad \udcff title")
    assert "bad ? title" in out.read_text(encoding="utf-8")


def test_large_png_is_recompressed_and_still_decodes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(900, 2000, 3)), axis=1)
    img = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    (tmp_path / "s").mkdir()
    Image.fromarray(img).save(tmp_path / "s" / "big.png")
    Section("Big").figure(tmp_path / "s" / "big.png").save(tmp_path / "s")
    page = build_report(tmp_path).read_text()
    b64 = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    import base64

    data = base64.b64decode(b64)
    shown = Image.open(io.BytesIO(data))
    assert shown.width == 1600 and len(data) < (tmp_path / "s" / "big.png").stat().st_size


def test_folded_sections_start_closed(tmp_path):
    Section("Card", open=False).save(tmp_path / "a")
    Section("Open").save(tmp_path / "b")
    page = build_report(tmp_path).read_text()
    assert re.search(r'id="card"><details>\s*<summary><h2>Card</h2>', page)
    assert re.search(r'id="open"><details open>', page)


def test_a_result_file_without_section_shows_its_rows(tmp_path):
    from innerprobe.results import Result

    r = Result("apex", data={"n": 3}, rows=[row("escape_noise_median", 0.25, model="digits-mlp", seeds=[0])])
    r.save(tmp_path / "run" / "apex.json")
    page = build_report(tmp_path).read_text()
    assert "Escape noise median" in page and "1 seed" in page
