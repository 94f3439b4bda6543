"""Report sections: what a study or command writes for the HTML report to show.

A section is ``section.json`` in a result folder::

    {"title": str, "order": int, "paragraphs": [str], "tables": [{"caption", "columns", "rows"}],
     "figures": [{"file": "name.png", "caption": str}]}

Figure files are relative to the section's folder. ``innerprobe report DIR`` collects every
``section.json`` below DIR, sorted by (order, title), and embeds the figures.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..results import to_jsonable


@dataclass
class Section:
    title: str
    order: int = 100
    paragraphs: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)

    def table(self, caption: str, columns: list[str], rows: list[list]) -> "Section":
        self.tables.append({"caption": caption, "columns": list(columns), "rows": to_jsonable(rows)})
        return self

    def figure(self, file: str | Path, caption: str = "") -> "Section":
        self.figures.append({"file": Path(file).name, "caption": caption})
        return self

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "section.json"
        path.write_text(json.dumps(to_jsonable(asdict(self)), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Section":
        d = json.loads(Path(path).read_text())
        return cls(**{k: d.get(k, v) for k, v in (("title", ""), ("order", 100), ("paragraphs", []), ("tables", []), ("figures", []))})


def write_section(folder, title: str, *, order: int = 100, paragraphs=(), tables=(), figures=()) -> Path:
    """Shorthand: ``write_section(out, "APEX backdoor", paragraphs=[...], figures=[{"file": ..., "caption": ...}])``."""
    return Section(title, order, list(paragraphs), list(tables), list(figures)).save(folder)
