"""Results as data: a JSON round-trip with provenance, and ``to_dataframe()``.

A :class:`Result` holds a ``kind`` (e.g. ``"apex"``), a JSON-able ``data`` dict (headline
figures, config echo), named ``tables`` (lists of row dicts, each one DataFrame) and optional
numpy ``arrays`` (saved next to the JSON as ``.npz``, loaded with ``allow_pickle=False``).
Plots, the report and the CLI read result files only, so notebooks, CLI and CI share one path.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


def provenance(*, seed: int | None = None, model: str | None = None, sites: Any = None, config: dict | None = None, device: str = "cpu") -> dict:
    """The provenance block every result carries."""
    import torch

    from . import __version__

    prov = {
        "innerprobe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "seed": seed,
        "model": model,
        "sites": None if sites is None else [str(s) for s in (sites if isinstance(sites, (list, tuple)) else [sites])],
        "config": to_jsonable(config or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    transformers = sys.modules.get("transformers")  # only if the caller already uses it: never import it here
    if transformers is not None:
        prov["transformers"] = getattr(transformers, "__version__", None)
    return prov


def to_jsonable(obj: Any) -> Any:
    """Tensors and arrays to lists, numpy scalars to Python, NaN/inf to None, dataclasses to dicts."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class Result:
    """A method's or study's output, as data."""

    kind: str
    data: dict = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "data": to_jsonable(self.data), "tables": to_jsonable(self.tables),
                "provenance": to_jsonable(self.provenance), "arrays": sorted(self.arrays)}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and, if there are arrays, ``path`` with suffix ``.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        if self.arrays:
            np.savez_compressed(path.with_suffix(".npz"), **{k: np.asarray(v) for k, v in self.arrays.items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Result":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read result file {path}: {e}", hint="pass a .json file written by innerprobe") from None
        if not isinstance(d, dict) or "kind" not in d:
            raise DataError(f"{path} is not an innerprobe result (no 'kind')")
        arrays = {}
        names = d.get("arrays") or []
        if names:
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in names}
        return cls(kind=d["kind"], data=d.get("data", {}), tables=d.get("tables", {}), provenance=d.get("provenance", {}), arrays=arrays)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_dataframe(self, table: str | None = None):
        """One table as a pandas DataFrame (the first table if ``table`` is None)."""
        import pandas as pd

        if not self.tables:
            return pd.DataFrame([{k: v for k, v in to_jsonable(self.data).items() if not isinstance(v, (dict, list))}])
        name = table or next(iter(self.tables))
        if name not in self.tables:
            from .errors import ConfigError, did_you_mean

            raise ConfigError(f"result has no table {name!r}", hint=did_you_mean(name, self.tables))
        return pd.DataFrame(self.tables[name])
