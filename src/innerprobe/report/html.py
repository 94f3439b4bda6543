"""One self-contained static HTML page from the result files below a folder.

:func:`build_report` collects every ``section.json`` below a folder (see
:mod:`innerprobe.report.sections`), sorts them by ``(order, title)`` and renders one page:
inline CSS, PNG figures embedded as base64 ``data:`` URIs, tables, a table of contents and a
provenance footer (innerprobe and torch versions, when the page was made, which files went in).
A result file (``Result.save``) in a folder that has no ``section.json`` gets a plain section of
its own (headline values and tables), so every result written below the folder is shown.
Nothing is fetched from the network when the page is opened; a missing figure becomes a visible
note in its place.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, DataError
from .sections import Section

#: Rows shown per table (the rest is summarised in one line).
MAX_ROWS = 200
#: Folders never searched for sections.
_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules"}


@dataclass
class LoadedSection:
    """A section plus where it came from."""

    section: Section
    folder: Path
    source: Path
    anchor: str = ""
    problems: list[str] = field(default_factory=list)
    display_title: str = ""  # the title plus what tells this run apart, when several sections share a title
    toc_note: str = ""


def _walk(root: Path, name: str | None = None, suffix: str | None = None) -> list[Path]:
    """Files below ``root`` named ``name`` (or ending in ``suffix``), sorted; hidden and tool folders are not entered."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            if (name is not None and f == name) or (suffix is not None and f.endswith(suffix)):
                found.append(Path(dirpath) / f)
    return sorted(found)


def _result_section(path: Path) -> Section | None:
    """A plain section for a Result JSON file (None when the file is not a Result)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("provenance"), dict)):
        return None
    sec = Section(title=f"Result: {d['kind']} ({path.name})", order=900)
    prov = d["provenance"]
    sec.run = {k: prov[k] for k in ("model", "created") if isinstance(prov.get(k), str)}
    bits = [f"{k}={prov[k]}" for k in ("model", "seed", "sites") if prov.get(k) is not None]
    if bits:
        sec.paragraphs.append("Provenance: " + ", ".join(str(b) for b in bits))
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    rows = d.get("rows")  # Result.save writes the headline rows at the top level
    if isinstance(rows, list) and all(isinstance(r, dict) and "metric" in r for r in rows):
        sec.rows = rows
    scalars = [[k, v] for k, v in data.items() if not isinstance(v, (dict, list))]
    if scalars:
        sec.table("Headline values", ["name", "value"], scalars)
    tables = d.get("tables") if isinstance(d.get("tables"), dict) else {}
    for name, rows in tables.items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            cols = list(dict.fromkeys(k for r in rows for k in r))
            sec.table(name, cols, [[r.get(c) for c in cols] for r in rows])
    return sec


def _load_section(path: Path, root: Path) -> LoadedSection:
    """A section file, or a visible "unreadable section" entry saying what is wrong with it."""
    try:
        return LoadedSection(Section.load(path), path.parent, path)
    except (OSError, ValueError, TypeError, UnicodeError) as e:
        sec = Section(
            title=f"Unreadable section: {path.relative_to(root)}",
            order=0,
            paragraphs=[f"This section.json could not be read: {e}"],
        )
        return LoadedSection(sec, path.parent, path, problems=[str(e)])


def _name_runs(out: list[LoadedSection]) -> None:
    """Anchors, and for sections sharing a title a display title naming the run (model, command, time)."""
    counts: dict[str, int] = {}
    for s in out:
        counts[s.section.title] = counts.get(s.section.title, 0) + 1
    used: set[str] = set()
    for s in out:
        run = s.section.run or {}
        if counts[s.section.title] > 1:
            what = [str(run[k]) for k in ("model", "created") if run.get(k)] or [str(s.source.parent.name)]
            s.toc_note = " · ".join(what)
            s.display_title = f"{s.section.title} ({s.toc_note})"
        base = re.sub(r"[^a-z0-9]+", "-", (s.display_title or s.section.title).lower()).strip("-") or "section"
        anchor, i = base, 2
        while anchor in used:
            anchor, i = f"{base}-{i}", i + 1
        used.add(anchor)
        s.anchor = anchor


def collect_sections(root: str | Path) -> list[LoadedSection]:
    """Every ``section.json`` below ``root`` (plus result files in folders without one), sorted by (order, title).

    A section file that cannot be read becomes a visible "unreadable section" entry rather than an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"report folder {str(root)!r} does not exist or is not a folder",
            hint="pass the folder a study or 'innerprobe demo --out DIR' wrote",
        )
    out = [_load_section(path, root) for path in _walk(root, name="section.json")]
    covered = {s.source.parent for s in out}
    for path in _walk(root, suffix=".json"):
        if path.name == "section.json" or path.parent in covered or any(p in covered for p in path.parents):
            continue
        sec = _result_section(path)
        if sec is not None:
            out.append(LoadedSection(sec, path.parent, path))
    out.sort(key=lambda s: (s.section.order, s.section.title, str(s.section.run.get("created", "")), str(s.source)))
    _name_runs(out)
    return out


def _inline(text: str) -> str:
    """Escape text; then `code` and **bold** as the only markup."""
    t = html.escape(str(text))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


def fmt_value(v) -> str:
    """A table cell: floats to 4 significant digits, None as an en dash, booleans as yes/no."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    return str(v)


def _cell_class(v) -> str:
    if isinstance(v, bool):
        return ' class="ok"' if v else ' class="bad"'
    if isinstance(v, str) and v.lower() in ("met", "ok", "passed"):
        return ' class="ok"'
    if isinstance(v, str) and (v.lower() in ("not met", "failed", "missing") or v.lower().startswith("failed")):
        return ' class="bad"'
    if isinstance(v, (int, float)):
        return ' class="num"'
    return ""


#: Tables longer than this are folded away (the caption stays in view); figures past FIGS_SHOWN too.
FOLD_ROWS = 12
FIGS_SHOWN = 4
#: Embedded PNGs wider than this are scaled down (the page column is narrower); all are re-encoded when smaller.
MAX_FIG_WIDTH = 1600
_MISSING = re.compile(r"\[\s*(nan|n/a|None)\s*,\s*(nan|n/a|None)\s*\]|\b(nan|NaN|None)\b|-0(\.0+)?(?![\d.])")


def clean_prose(text: str) -> tuple[str, int]:
    """``text`` with missing-value tokens (None, nan, [nan, nan]) shown as "n/a" and -0.00 as 0.00; and their count.

    Studies should say why a figure is missing; the report never shows Python's spelling of it.
    """
    count = 0

    def sub(m: re.Match) -> str:
        nonlocal count
        count += 1
        return m.group(0)[1:] if m.group(0).startswith("-0") else "n/a"

    return _MISSING.sub(sub, text), count


def _label(name: str) -> str:
    """An identifier for people: ``target_share_ratio`` -> ``Target share ratio``."""
    s = str(name).replace("_", " ").strip()
    return s[:1].upper() + s[1:]


def _condition(cond) -> str:
    if not isinstance(cond, dict) or not cond:
        return "" if cond in (None, {}) else fmt_value(cond)
    return ", ".join(f"{_label(k).lower()} {fmt_value(v)}" for k, v in cond.items())


def _interval(r: dict) -> str:
    """The CI cell of a result row: "[lo, hi]", or a dash (one seed: the n column says so), or why there is none."""
    lo, hi = r.get("lo"), r.get("hi")
    if _finite(lo) and _finite(hi):
        return f"[{fmt_value(float(lo))}, {fmt_value(float(hi))}]"
    if len(r.get("seeds") or []) == 1 or r.get("n") == 1:
        return "–"
    return str(r.get("why") or "no interval")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rows_table(rows: list[dict]) -> str:
    """Headline result rows as one table, labels made here; constant columns (one model, no condition) are dropped."""
    models = {str(r.get("model")) for r in rows if r.get("model") is not None}
    conds = [_condition(r.get("condition")) for r in rows]
    cols = ["measure"] + (["model"] if len(models) > 1 else []) + (["condition"] if any(conds) else [])
    with_ci = any(_finite(r.get("lo")) for r in rows)
    cols += ["value"] + (["95% CI"] if with_ci else []) + ["n"]
    body = []
    for r, cond in zip(rows, conds):
        v = r.get("value")
        value = fmt_value(v) if v is not None else str(r.get("why") or "not computed")
        seeds = r.get("seeds") or []
        n = r.get("n")
        n_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}" if seeds else ("" if n is None else str(n))
        if seeds and n is not None and n != len(seeds):
            n_text += f", n = {n}"
        cells = [_label(r.get("metric", ""))] + ([str(r.get("model") or "")] if "model" in cols else [])
        cells += [cond] if "condition" in cols else []
        cells += [value] + ([_interval(r)] if with_ci else []) + [n_text]
        first_num = len(cells) - (3 if with_ci else 2)
        body.append(
            "<tr>"
            + "".join(f"<td{' class=num' if i >= first_num else ''}>{html.escape(c)}</td>" for i, c in enumerate(cells))
            + "</tr>"
        )
    if len(models) == 1:
        caption = f"Headline figures ({html.escape(models.pop())})"
    else:
        caption = "Headline figures"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    return (
        f'<div class="tablewrap headline"><table><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _table_html(t: dict) -> str:
    cols = [str(c) for c in (t.get("columns") or [])]
    rows = t.get("rows") or []
    parts = ['<div class="tablewrap"><table>']
    fold = t.get("fold")
    fold = len(rows) > FOLD_ROWS if fold is None else bool(fold)
    if t.get("caption") and not fold:
        parts.append(f"<caption>{_inline(t['caption'])}</caption>")
    if cols:
        parts.append("<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cols) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows[:MAX_ROWS]:
        if isinstance(row, dict):
            cells = [row.get(c) for c in cols]
        else:
            cells = row if isinstance(row, (list, tuple)) else [row]
        parts.append("<tr>" + "".join(f"<td{_cell_class(c)}>{html.escape(fmt_value(c))}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    if len(rows) > MAX_ROWS:
        parts.append(f'<p class="note">{len(rows) - MAX_ROWS} more rows not shown (see the result file).</p>')
    parts.append("</div>")
    inner = "".join(parts)
    if not fold:
        return inner
    cap = _inline(t.get("caption") or "Table")
    return (
        f'<details class="fold"><summary>{cap} <span class="note">({len(rows)} rows)</span></summary>{inner}</details>'
    )


def _compress(data: bytes) -> bytes:
    """A PNG re-encoded smaller (scaled to MAX_FIG_WIDTH, 256-colour palette) when that saves bytes; else as it was."""
    if len(data) < 16_000:
        return data
    try:
        from PIL import Image

        img = Image.open(io.BytesIO(data))
        img.load()
        if img.width > MAX_FIG_WIDTH:
            h = round(img.height * MAX_FIG_WIDTH / img.width)
            img = img.resize((MAX_FIG_WIDTH, h), Image.Resampling.LANCZOS)
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        img = img.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError):  # an image Pillow cannot read is embedded as it is
        return data
    small = buf.getvalue()
    return small if len(small) < len(data) else data


def _figure_html(fig: dict, folder: Path, root: Path, problems: list[str]) -> str:
    name = str(fig.get("file", ""))
    caption = _inline(fig.get("caption", ""))
    path = (folder / name).resolve()
    inside = path.is_relative_to(folder.resolve())
    if not name or not inside or not path.is_file():
        shown = html.escape(str((folder / name).relative_to(root)) if inside and name else name or "(no file name)")
        problems.append(f"missing figure {shown}")
        return (
            f'<figure class="missing"><div class="missingbox">Figure not found: <code>{shown}</code></div>'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime, data = "image/png", _compress(data)
    elif path.suffix.lower() == ".svg":
        mime = "image/svg+xml"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        problems.append(f"figure {name} is not a PNG/JPEG/SVG")
        return (
            f'<figure class="missing"><div class="missingbox">Not an image: <code>{html.escape(name)}</code></div>'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(fig.get("caption", "") or name)}" src="data:{mime};base64,{b64}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


_CSS = """
:root{--fg:#1d2430;--muted:#5b6573;--line:#d9dee5;--bg:#f6f7f9;--card:#fff;--accent:#0b62a4;--ok:#1a7f37;
--bad:#c62828}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
background:var(--bg);overflow-wrap:anywhere}
header{background:#17324d;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:23px}
header p{margin:0;color:#c9d6e3;font-size:13px}
.layout{display:grid;grid-template-columns:250px minmax(0,1fr);gap:20px;max-width:1440px;margin:0 auto;
padding:18px 20px 40px}
nav.toc{position:sticky;top:12px;align-self:start;max-height:calc(100vh - 24px);overflow:auto;background:var(--card);
border:1px solid var(--line);border-radius:8px;padding:10px 14px;font-size:13px}
nav.toc h2{font-size:14px;margin:0 0 6px}
nav.toc ol{margin:0;padding-left:18px}
nav.toc li{margin:3px 0}
nav.toc .when{color:var(--muted);font-size:11px}
main{min-width:0}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
section.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 20px 14px;
margin-bottom:16px;scroll-margin-top:10px}
section.card>details>summary{cursor:pointer;list-style-position:outside;margin-left:16px}
section.card h2{display:inline;font-size:19px;margin:0}
section.failed{border-left:6px solid var(--bad)}
p.src{color:var(--muted);font-size:12px;margin:4px 0 8px}
p.note,span.note{color:var(--muted);font-size:12px}
p.top{text-align:right;margin:6px 0 0;font-size:12px}
details.fold{margin:6px 0;border:1px solid var(--line);border-radius:6px;padding:4px 10px;background:#fbfcfd}
details.fold>summary{cursor:pointer;font-weight:600;font-size:13px}
.tablewrap{overflow-x:auto;margin:6px 0;max-width:100%}
table{border-collapse:collapse;font-size:13px}
caption{text-align:left;font-weight:600;padding:2px 0 6px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok{color:var(--ok);font-weight:600}td.bad{color:var(--bad);font-weight:600}
.headline table{font-size:14px}
.flow{display:flex;flex-wrap:wrap;gap:10px 22px;align-items:flex-start}
figure{margin:6px 0;max-width:100%}
figure img{display:block;max-width:100%;max-height:900px;height:auto;object-fit:contain;border:1px solid var(--line);
border-radius:4px;background:#fff}
figcaption{font-size:12px;color:var(--muted);max-width:560px}
.missingbox{border:2px dashed var(--bad);color:var(--bad);padding:18px;border-radius:6px;background:#fff5f5}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;background:#eef1f5;padding:0 3px;
border-radius:3px}
pre{white-space:pre-wrap;background:#eef1f5;padding:8px;border-radius:4px;font-size:12px}
footer{border-top:1px solid var(--line);margin-top:26px;padding-top:10px;color:var(--muted);font-size:12px}
footer table{font-size:12px}
@media (max-width:900px){.layout{grid-template-columns:minmax(0,1fr)}nav.toc{position:static;max-height:none}}
"""


def _versions() -> dict:
    v = {"innerprobe": __version__, "torch": getattr(sys.modules.get("torch"), "__version__", "not loaded")}
    v["python"] = platform.python_version()
    return v


def _run_line(run: dict) -> str:
    bits = [f"<code>{html.escape(str(run['command']))}</code>"] if run.get("command") else []
    bits += [html.escape(str(run[k])) for k in ("model", "created") if run.get(k)]
    return " · ".join(bits)


def _section_html(s: LoadedSection, root: Path) -> str:
    sec = s.section
    failed = sec.title.lower().startswith("failed")
    title = _inline(s.display_title or sec.title)
    opened = " open" if sec.open or failed else ""
    parts = [
        f'<section class="card{" failed" if failed else ""}" id="{s.anchor}"><details{opened}>',
        f"<summary><h2>{title}</h2></summary>",
    ]
    src = f"from <code>{html.escape(str(s.source.relative_to(root)))}</code>"
    run = _run_line(sec.run or {})
    parts.append(f'<p class="src">{src}{" · " + run if run else ""}</p>')
    if sec.rows:
        parts.append(_rows_table(sec.rows))
    for p in sec.paragraphs:
        p, bad = clean_prose(str(p))
        if bad:
            s.problems.append(f"{bad} missing value(s) in the prose")
        if p.startswith("```") and p.endswith("```"):
            parts.append(f"<pre>{html.escape(p.strip('`').strip())}</pre>")
        else:
            parts.append(f"<p>{_inline(p)}</p>")
    figs = [f if isinstance(f, dict) else {"file": str(f)} for f in sec.figures]
    if sec.tables or figs:  # figures first (headline), then tables; long ones folded
        parts.append('<div class="flow">')
        parts += [_figure_html(f, s.folder, root, s.problems) for f in figs[:FIGS_SHOWN]]
        parts += [_table_html(t if isinstance(t, dict) else {"rows": t}) for t in sec.tables]
        parts.append("</div>")
        if len(figs) > FIGS_SHOWN:
            more = "".join(_figure_html(f, s.folder, root, s.problems) for f in figs[FIGS_SHOWN:])
            parts.append(
                f'<details class="fold"><summary>{len(figs) - FIGS_SHOWN} more figures</summary>'
                f'<div class="flow">{more}</div></details>'
            )
    parts.append('<p class="top"><a href="#top">back to the top</a></p></details></section>')
    return "\n".join(parts)


def _footer(sections: list[LoadedSection], root: Path, made: str, v: dict) -> list[str]:
    rows = []
    for s in sections:
        extra = "; ".join(html.escape(p) for p in s.problems)
        rows.append(
            f"<tr><td><code>{html.escape(str(s.source.relative_to(root)))}</code></td>"
            f"<td>{_inline(s.display_title or s.section.title)}</td><td>{len(s.section.figures)}</td>"
            f"<td>{extra or 'ok'}</td></tr>"
        )
    out = [
        "<footer>",
        (
            f"<p>Generated {html.escape(made)} by innerprobe {html.escape(v['innerprobe'])} with torch "
            f"{html.escape(v['torch'])} (Python {html.escape(v['python'])}) from "
            f"<code>{html.escape(str(root.resolve()))}</code>.</p>"
        ),
        '<details class="fold"><summary>Files that went in</summary>',
        "<table><thead><tr><th>section file</th><th>title</th><th>figures</th><th>status</th></tr></thead><tbody>",
        *rows,
        "</tbody></table></details>",
    ]
    results = _result_provenance(root)
    if results:
        out += [
            '<details class="fold"><summary>Result files below the folder, with their provenance</summary>',
            (
                "<table><thead><tr><th>result file</th><th>kind</th><th>created</th><th>seed</th><th>model</th>"
                "<th>innerprobe</th><th>torch</th></tr></thead><tbody>"
            ),
        ]
        for rel, kind, prov in results:
            cells = [rel, kind] + [prov.get(k) for k in ("created", "seed", "model", "innerprobe", "torch")]
            out.append("<tr>" + "".join(f"<td>{html.escape(fmt_value(c))}</td>" for c in cells) + "</tr>")
        out.append("</tbody></table></details>")
    out.append("</footer>")
    return out


def render_html(sections: list[LoadedSection], root: str | Path, *, title: str = "innerprobe report") -> str:
    """The page as a string (see :func:`build_report`): a sticky contents sidebar, one collapsible card per section."""
    root = Path(root)
    title = title.encode("utf-8", "replace").decode("utf-8")
    body = [_section_html(s, root) for s in sections]
    toc = [
        f'<li><a href="#{s.anchor}">{_inline(s.section.title)}</a>'
        + (f'<br><span class="when">{html.escape(s.toc_note)}</span>' if s.toc_note else "")
        + "</li>"
        for s in sections
    ]
    v = _versions()
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    footer = _footer(sections, root, made, v)
    nav = ('<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>' + "".join(toc) + "</ol></nav>") if toc else ""
    empty = "" if toc else '<p class="note">No sections were found below the folder.</p>'
    head = (
        f'<header id="top"><h1>{html.escape(title)}</h1><p>{len(sections)} sections · generated '
        f"{html.escape(made)} · innerprobe {html.escape(v['innerprobe'])} · torch "
        f"{html.escape(v['torch'])}</p></header>"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            head,
            '<div class="layout">',
            nav,
            "<main>",
            empty,
            *body,
            *footer,
            "</main></div></body></html>",
        ]
    )


def _result_provenance(root: Path) -> list[tuple[str, str, dict]]:
    out = []
    for path in _walk(root, suffix=".json"):
        if path.name == "section.json":
            continue
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("provenance"), dict):
            out.append((str(path.relative_to(root)), d["kind"], d["provenance"]))
    return out


def build_report(root: str | Path, out: str | Path | None = None, *, title: str = "innerprobe report") -> Path:
    """Write the report of every section below ``root`` to ``out`` (default ``root/report.html``); return its path."""
    root = Path(root)
    if out is not None and str(out).strip() == "":
        raise ConfigError("the report's output path is empty", hint="give a file name such as report.html, or omit it")
    out = Path(out) if out is not None else root / "report.html"
    if out.is_dir():
        raise ConfigError(
            f"the report's output path {str(out)!r} is a folder",
            hint=f"give a file name, e.g. {str(out / 'report.html')!r}",
        )
    sections = collect_sections(root)
    if not sections:
        raise DataError(
            f"no section.json or result files below {str(root)!r}",
            hint="run a study ('innerprobe study NAME --out DIR') or 'innerprobe demo --out DIR' first",
        )
    page = render_html(sections, root, title=title)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the report to {str(out)!r}: {e.strerror or e}", hint="choose a writable --out file"
        ) from None
    return out
