"""Report sections: what a study or command writes for the HTML report to show.

A section is ``section.json`` in a result folder::

    {"title": str, "order": int, "paragraphs": [str],
     "rows": [result rows],              # headline figures (innerprobe.results.row), shown first
     "tables": [{"caption", "columns", "rows", "fold"?}],
     "figures": [{"file": "name.png", "caption": str}],
     "run": {"command": str, "model": str, "created": str},   # who made it; tells runs apart
     "open": bool}                       # false: the section starts folded

Figure files are relative to the section's folder. ``innerprobe report DIR`` collects every
``section.json`` below DIR, sorted by (order, title), and embeds the figures. Labels for people
(metric names, conditions, "1 seed") are made when the page is rendered, never stored here.
See docs/results.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..results import to_jsonable

_LISTS = ("paragraphs", "rows", "tables", "figures")


@dataclass
class Section:
    title: str
    order: int = 100
    paragraphs: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    run: dict = field(default_factory=dict)
    open: bool = True  # shown unfolded; per-model detail (zoo cards) starts folded

    def table(self, caption: str, columns: list[str], rows: list[list], *, fold: bool | None = None) -> Section:
        """Add a table; ``fold`` folds it away by default (None: fold long tables)."""
        t = {"caption": caption, "columns": list(columns), "rows": to_jsonable(rows)}
        if fold is not None:
            t["fold"] = bool(fold)
        self.tables.append(t)
        return self

    def figure(self, file: str | Path, caption: str = "") -> Section:
        self.figures.append({"file": Path(file).name, "caption": caption})
        return self

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/section.json`` (atomically); ``run`` gets the time and command line if not set."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        run = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), **_command(), **(self.run or {})}
        path = folder / "section.json"
        tmp = folder / ".section.json.tmp"
        tmp.write_text(json.dumps(to_jsonable({**asdict(self), "run": run}), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Section:
        """Read and check a section file; a malformed one raises TypeError (ValueError for bad JSON) saying which field is wrong."""
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d) -> Section:
        if not isinstance(d, dict):
            raise TypeError(f"a section must be a JSON object, not {type(d).__name__}")
        title, order = d.get("title", ""), d.get("order", 100)
        if not isinstance(title, str):
            raise TypeError("'title' must be a string")
        if isinstance(order, bool) or not isinstance(order, (int, float)):
            raise TypeError("'order' must be a number")
        kw = {}
        for k in _LISTS:
            v = d.get(k)
            if v is None:
                v = []
            if not isinstance(v, list):
                raise TypeError(f"{k!r} must be a list, not {type(v).__name__}")
            kw[k] = v
        for t in kw["tables"]:
            if not isinstance(t, dict) or not isinstance(t.get("rows", []), list):
                raise TypeError("each table must be an object whose 'rows' is a list")
        for r in kw["rows"]:
            if not isinstance(r, dict) or "metric" not in r:
                raise TypeError("each of 'rows' must be a result row with a 'metric' field")
        run = d.get("run") or {}
        if not isinstance(run, dict):
            raise TypeError("'run' must be an object")
        if not isinstance(d.get("open", True), bool):
            raise TypeError("'open' must be true or false")
        kw["open"] = d.get("open", True)
        kw["figures"] = [f if isinstance(f, dict) else {"file": str(f)} for f in kw["figures"]]
        return cls(title=title, order=order, run=run, **kw)


def _command() -> dict:
    """The command line, when this process is the innerprobe CLI."""
    argv = sys.argv
    first = Path(argv[0]) if argv else Path()
    if first.name == "innerprobe" or (first.name == "__main__.py" and first.parent.name == "innerprobe"):
        return {"command": "innerprobe " + " ".join(argv[1:])}
    return {}


def write_section(
    folder, title: str, *, order: int = 100, paragraphs=(), tables=(), figures=(), rows=(), run=None
) -> Path:
    """Shorthand: ``write_section(out, "APEX backdoor", paragraphs=[...], figures=[{"file": ..., "caption": ...}])``."""
    return Section(title, order, list(paragraphs), list(tables), list(figures), list(rows), dict(run or {})).save(
        folder
    )
