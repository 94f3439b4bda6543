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
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
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


def _walk(root: Path, name: str | None = None, suffix: str | None = None) -> list[Path]:
    """Files below ``root`` named ``name`` (or ending in ``suffix``), sorted; hidden and tool folders are not entered."""
    import os

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
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("provenance"), dict)):
        return None
    sec = Section(title=f"Result: {d['kind']} ({path.name})", order=900)
    prov = d["provenance"]
    bits = [f"{k}={prov[k]}" for k in ("model", "seed", "sites") if prov.get(k) is not None]
    if bits:
        sec.paragraphs.append("Provenance: " + ", ".join(str(b) for b in bits))
    scalars = [[k, v] for k, v in (d.get("data") or {}).items() if not isinstance(v, (dict, list))]
    if scalars:
        sec.table("Headline values", ["name", "value"], scalars)
    for name, rows in (d.get("tables") or {}).items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            cols = list(dict.fromkeys(k for r in rows for k in r))
            sec.table(name, cols, [[r.get(c) for c in cols] for r in rows])
    return sec


def collect_sections(root: str | Path) -> list[LoadedSection]:
    """Every ``section.json`` below ``root`` (plus result files in folders without one), sorted by (order, title).

    A section file that cannot be read becomes a visible "unreadable section" entry rather than an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"report folder {str(root)!r} does not exist or is not a folder",
                        hint="pass the folder a study or 'innerprobe demo --out DIR' wrote")
    out: list[LoadedSection] = []
    covered: set[Path] = set()
    for path in _walk(root, name="section.json"):
        covered.add(path.parent)
        try:
            sec = Section.load(path)
            if not isinstance(sec.title, str) or not isinstance(sec.order, (int, float)):
                raise ValueError("'title' must be a string and 'order' a number")
            out.append(LoadedSection(sec, path.parent, path))
        except (OSError, ValueError, TypeError) as e:
            sec = Section(title=f"Unreadable section: {path.relative_to(root)}", order=0,
                          paragraphs=[f"This section.json could not be read: {e}"])
            out.append(LoadedSection(sec, path.parent, path, problems=[str(e)]))
    for path in _walk(root, suffix=".json"):
        if path.name == "section.json" or path.parent in covered or any(p in covered for p in path.parents):
            continue
        sec = _result_section(path)
        if sec is not None:
            out.append(LoadedSection(sec, path.parent, path))
    out.sort(key=lambda s: (s.section.order, s.section.title, str(s.source)))
    used: set[str] = set()
    for s in out:
        base = re.sub(r"[^a-z0-9]+", "-", s.section.title.lower()).strip("-") or "section"
        anchor, i = base, 2
        while anchor in used:
            anchor, i = f"{base}-{i}", i + 1
        used.add(anchor)
        s.anchor = anchor
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


def _table_html(t: dict) -> str:
    cols = [str(c) for c in (t.get("columns") or [])]
    rows = t.get("rows") or []
    parts = ['<div class="tablewrap"><table>']
    if t.get("caption"):
        parts.append(f"<caption>{_inline(t['caption'])}</caption>")
    if cols:
        parts.append("<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cols) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows[:MAX_ROWS]:
        cells = row if isinstance(row, (list, tuple)) else [row.get(c) for c in cols] if isinstance(row, dict) else [row]
        parts.append("<tr>" + "".join(f"<td{_cell_class(c)}>{html.escape(fmt_value(c))}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    if len(rows) > MAX_ROWS:
        parts.append(f'<p class="note">{len(rows) - MAX_ROWS} more rows not shown (see the result file).</p>')
    parts.append("</div>")
    return "".join(parts)


def _figure_html(fig: dict, folder: Path, root: Path, problems: list[str]) -> str:
    name = str(fig.get("file", ""))
    caption = _inline(fig.get("caption", ""))
    path = (folder / name).resolve()
    inside = path.is_relative_to(folder.resolve())
    if not name or not inside or not path.is_file():
        shown = html.escape(str((folder / name).relative_to(root)) if inside and name else name or "(no file name)")
        problems.append(f"missing figure {shown}")
        return (f'<figure class="missing"><div class="missingbox">Figure not found: <code>{shown}</code></div>'
                f"<figcaption>{caption}</figcaption></figure>")
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif path.suffix.lower() == ".svg":
        mime = "image/svg+xml"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        problems.append(f"figure {name} is not a PNG/JPEG/SVG")
        return (f'<figure class="missing"><div class="missingbox">Not an image: <code>{html.escape(name)}</code></div>'
                f"<figcaption>{caption}</figcaption></figure>")
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{html.escape(fig.get("caption", "") or name)}" src="data:{mime};base64,{b64}">'
            f"<figcaption>{caption}</figcaption></figure>")


_CSS = """
:root{--fg:#1d2430;--muted:#5b6573;--line:#d9dee5;--bg:#f6f7f9;--card:#fff;--accent:#0b62a4;--ok:#1a7f37;--bad:#c62828}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#17324d;color:#fff;padding:22px 32px}
header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;color:#c9d6e3;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
nav.toc{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 20px;margin-bottom:20px}
nav.toc h2{font-size:15px;margin:0 0 6px}
nav.toc ol{margin:0;padding-left:22px;columns:2;column-gap:32px}
nav.toc li{break-inside:avoid}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
section.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 22px 18px;margin-bottom:18px}
section.card h2{font-size:19px;margin:4px 0 8px}
section.failed{border-left:6px solid var(--bad)}
p.src{color:var(--muted);font-size:12px;margin:-4px 0 8px}
p.note{color:var(--muted);font-size:12px}
.tablewrap{overflow-x:auto;margin:6px 0;max-width:100%}
table{border-collapse:collapse;font-size:13px}
caption{text-align:left;font-weight:600;padding:2px 0 6px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{color:var(--ok);font-weight:600}td.bad{color:var(--bad);font-weight:600}
.flow{display:flex;flex-wrap:wrap;gap:10px 22px;align-items:flex-start}
figure{margin:6px 0;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px;background:#fff}
figcaption{font-size:12px;color:var(--muted);max-width:560px}
.missingbox{border:2px dashed var(--bad);color:var(--bad);padding:18px;border-radius:6px;background:#fff5f5}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;background:#eef1f5;padding:0 3px;border-radius:3px}
pre{white-space:pre-wrap;background:#eef1f5;padding:8px;border-radius:4px;font-size:12px}
footer{border-top:1px solid var(--line);margin-top:26px;padding-top:10px;color:var(--muted);font-size:12px}
footer table{font-size:12px}
"""


def _versions() -> dict:
    from .. import __version__

    v = {"innerprobe": __version__}
    try:
        import torch

        v["torch"] = torch.__version__
    except Exception:  # pragma: no cover
        v["torch"] = "not installed"
    import platform

    v["python"] = platform.python_version()
    return v


def render_html(sections: list[LoadedSection], root: str | Path, *, title: str = "innerprobe report") -> str:
    """The page as a string (see :func:`build_report`)."""
    root = Path(root)
    body, toc, files = [], [], []
    for s in sections:
        sec = s.section
        failed = sec.title.lower().startswith("failed")
        parts = [f'<section class="card{" failed" if failed else ""}" id="{s.anchor}">', f"<h2>{_inline(sec.title)}</h2>"]
        parts.append(f'<p class="src">from <code>{html.escape(str(s.source.relative_to(root)))}</code></p>')
        for p in sec.paragraphs:
            p = str(p)
            if p.startswith("```") and p.endswith("```"):
                parts.append(f"<pre>{html.escape(p.strip('`').strip())}</pre>")
            else:
                parts.append(f"<p>{_inline(p)}</p>")
        if sec.tables or sec.figures:  # tables, then figures, flowing side by side where they fit
            parts.append('<div class="flow">')
            for t in sec.tables:
                parts.append(_table_html(t if isinstance(t, dict) else {"rows": t}))
            for f in sec.figures:
                parts.append(_figure_html(f if isinstance(f, dict) else {"file": str(f)}, s.folder, root, s.problems))
            parts.append("</div>")
        parts.append("</section>")
        body.append("\n".join(parts))
        toc.append(f'<li><a href="#{s.anchor}">{_inline(sec.title)}</a></li>')
        files.append(s)

    v = _versions()
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows = []
    for s in files:
        extra = f" ({'; '.join(html.escape(p) for p in s.problems)})" if s.problems else ""
        rows.append(f"<tr><td><code>{html.escape(str(s.source.relative_to(root)))}</code></td>"
                    f"<td>{_inline(s.section.title)}</td><td>{len(s.section.figures)}</td><td>{extra or 'ok'}</td></tr>")
    results = _result_provenance(root)
    footer = [
        "<footer>",
        f"<p>Generated {html.escape(made)} by innerprobe {html.escape(v['innerprobe'])} with torch {html.escape(v['torch'])}"
        f" (Python {html.escape(v['python'])}) from <code>{html.escape(str(root.resolve()))}</code>.</p>",
        "<table><thead><tr><th>section file</th><th>title</th><th>figures</th><th>status</th></tr></thead><tbody>",
        *rows, "</tbody></table>",
    ]
    if results:
        footer += ["<p>Result files found below the folder, with their provenance:</p>",
                   "<table><thead><tr><th>result file</th><th>kind</th><th>created</th><th>seed</th><th>model</th>"
                   "<th>innerprobe</th><th>torch</th></tr></thead><tbody>"]
        for rel, kind, prov in results:
            cells = [rel, kind] + [prov.get(k) for k in ("created", "seed", "model", "innerprobe", "torch")]
            footer.append("<tr>" + "".join(f"<td>{html.escape(fmt_value(c))}</td>" for c in cells) + "</tr>")
        footer.append("</tbody></table>")
    footer.append("</footer>")

    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1><p>{len(sections)} sections · generated {html.escape(made)} · "
        f"innerprobe {html.escape(v['innerprobe'])} · torch {html.escape(v['torch'])}</p></header>",
        "<main>",
        '<nav class="toc"><h2>Contents</h2><ol>' + "".join(toc) + "</ol></nav>" if toc else
        '<p class="note">No sections were found below the folder.</p>',
        *body, *footer, "</main></body></html>",
    ])


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
    sections = collect_sections(root)
    if not sections:
        raise DataError(f"no section.json or result files below {str(root)!r}",
                        hint="run a study ('innerprobe study NAME --out DIR') or 'innerprobe demo --out DIR' first")
    out = Path(out) if out is not None else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(sections, root, title=title)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
