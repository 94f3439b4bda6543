"""README.md: every ```python block stands on its own.

Fast: each block compiles, and every ``from innerprobe... import NAME`` in it names something that exists.
Slow: each block runs by itself in a fresh interpreter (it loads trained zoo models from the cache, training
them if missing). The first two commands of the README stay ``make demo`` and ``make test``.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_first_two_commands_are_make_demo_and_make_test():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    cmds = [line.split("#")[0].strip() for line in first if line.strip()]
    assert cmds[:2] == ["make demo", "make test"]


def test_there_are_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_block_compiles_and_its_innerprobe_imports_exist(i):
    tree = ast.parse(BLOCKS[i], filename=f"README block {i + 1}")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound = {
        a.asname or a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    bound |= {
        t.id
        for n in ast.walk(tree)
        if isinstance(n, (ast.Assign, ast.For, ast.comprehension))
        for t in ast.walk(n.target if not isinstance(n, ast.Assign) else ast.Tuple(n.targets, ast.Load()))
        if isinstance(t, ast.Name)
    }
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.Lambda) for a in n.args.args}
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler) and n.name}
    with_items = {
        t.id
        for n in ast.walk(tree)
        if isinstance(n, ast.withitem) and n.optional_vars is not None
        for t in ast.walk(n.optional_vars)
        if isinstance(t, ast.Name)
    }
    import builtins

    missing = names - bound - with_items - set(dir(builtins))
    assert not missing, f"README block {i + 1} uses names it never defines: {sorted(missing)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("innerprobe"):
            mod = importlib.import_module(node.module)
            for a in node.names:
                assert hasattr(mod, a.name) or importlib.util.find_spec(f"{node.module}.{a.name}"), (
                    f"README block {i + 1}: {node.module} has no {a.name}"
                )


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_block_runs_on_its_own(i, tmp_path):
    code = "import torch; torch.set_num_threads(1)\n" + BLOCKS[i]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INNERPROBE_PROGRESS": "0", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README block {i + 1} failed:\n{r.stderr[-3000:]}"
