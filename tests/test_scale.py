"""Scale-out (docs/scale.md): sharded runs equal one-process runs, whatever the executor, the workers or the
sharding; resume after a killed run; a failing task reported without losing the others; Ray on a real local
two-CPU cluster started and shut down here; importing innerprobe never imports Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe import scale
from innerprobe.core.tasks import Shared, Task, TaskFailed, get_executor, run_tasks
from innerprobe.errors import ConfigError
from innerprobe.patch.discovery import single_edge_effects
from innerprobe.patch.metrics import kl_div
from innerprobe.patch.path import prepare
from innerprobe.perturb import apex
from innerprobe.zoo.transformer import build_transformer

SIGMAS = np.geomspace(0.05, 20, 6)
OPTS = {"samples": 8, "seed": 3}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def data(n=18) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(1))


def tf_pair():
    torch.manual_seed(0)
    model = build_transformer(
        {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, "d_mlp": 8}
    ).eval()
    g = torch.Generator().manual_seed(2)
    return model, torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)


def same_result(a, b):
    for k in ("counts", "classes", "y0", "escape_sigma", "censor", "escape_class", "histogram"):
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)


def test_sharded_apex_equals_one_process_whatever_the_sharding():
    model, x = mlp(), data()
    ref = apex(model, x, SIGMAS, **OPTS)
    for shard in (1, 5, 18):
        same_result(scale.apex(model, x, SIGMAS, shard=shard, **OPTS), ref)
    rel = apex(model, x, SIGMAS, relative=True, **OPTS)
    same_result(scale.apex(model, x, SIGMAS, shard=4, relative=True, **OPTS), rel)


def test_per_input_positions_and_candidates_are_sliced_per_shard():
    model, x, _ = tf_pair()
    x = torch.randint(0, 11, (12, 8), generator=torch.Generator().manual_seed(5))
    pos = torch.randint(0, 8, (12,), generator=torch.Generator().manual_seed(6))
    cand = torch.randint(0, 11, (12, 3), generator=torch.Generator().manual_seed(7))
    ref = apex(model, x, SIGMAS, position=pos, tokens=cand, **OPTS)
    same_result(scale.apex(model, x, SIGMAS, shard=5, position=pos, tokens=cand, **OPTS), ref)
    with pytest.raises(ConfigError, match="per-input position"):
        scale.apex(model, x, SIGMAS, position=pos[:5], **OPTS)


def test_sharded_edges_equal_single_edge_effects():
    model, x_r, x_c = tf_pair()
    names, eff = scale.edge_effects(model, x_r, x_c, shard=7)
    from innerprobe.core.graph import build_graph

    g = build_graph(model)
    runs = prepare(g, x_r, x_c)
    kl = kl_div()
    clean = runs.clean["out"]
    ref = single_edge_effects(g, runs, lambda o: kl(clean, o))
    assert names == [str(e) for e in g.edges] and np.abs(eff).max() > 1e-4
    np.testing.assert_allclose(eff, ref.double().numpy(), atol=1e-6)


def test_two_process_workers_give_identical_counts(tmp_path):
    model, x = mlp(), data()
    one = scale.apex(model, x, SIGMAS, shard=6, **OPTS)
    two = scale.apex(model, x, SIGMAS, shard=6, executor="local", workers=2, **OPTS)
    same_result(one, two)


def test_store_resumes_after_a_killed_run(tmp_path):
    store = tmp_path / "tasks"
    code = (
        "import numpy as np, torch; from innerprobe import scale; import test_scale as t;"
        f"scale.apex(t.mlp(), t.data(60), np.geomspace(0.05, 20, 6), samples=64, seed=3, shard=1, store={str(store)!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    deadline = time.time() + 120

    def finished():  # a run killed mid-write leaves '.KEY.HOST.PID.tmp.npz'; only renamed files are results
        return [p for p in store.glob("*.npz") if not p.name.startswith(".")]

    while time.time() < deadline and len(finished()) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(finished())
    assert 3 <= done < 60
    calls = []
    real = scale.apex_shard

    def counting(**kw):
        calls.append(kw["rows"])
        return real(**kw)

    scale.apex_shard = counting
    try:
        res = scale.apex(mlp(), data(60), SIGMAS, samples=64, seed=3, shard=1, store=store)
    finally:
        scale.apex_shard = real
    assert len(calls) == 60 - done and not list(store.glob(".*tmp*"))
    same_result(res, apex(mlp(), data(60), SIGMAS, samples=64, seed=3))


def test_store_drops_temp_files_of_dead_writers_only(tmp_path):
    """A run killed mid-write leaves '.KEY.HOST.PID.tmp.npz'; the next save of that key removes it, a live one stays."""
    from innerprobe.core import tasks as T

    store, task = T.Store(tmp_path), Task("m:f", {"a": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{task.key}.{T._HOST}.{dead.pid}.tmp.npz"
    live = tmp_path / f".{task.key}.{T._HOST}.{os.getppid()}.tmp.npz"
    other_host = tmp_path / f".{task.key}.elsewhere.{dead.pid}.tmp.npz"
    for p in (stale, live, other_host):
        p.write_bytes(b"partial")
    store.save(task, {"x": np.arange(3)})
    assert not stale.exists() and live.exists() and other_host.exists()
    assert store.load(task)["x"].tolist() == [0, 1, 2]


def test_a_failing_task_is_reported_and_the_others_kept(tmp_path):
    model, x = mlp(), data()
    base = {"model": {"hash": "h"}, "data": "d", "sigmas": SIGMAS.tolist(), "config": OPTS}
    pay = {"model_obj": Shared("model"), "x": Shared("x")}
    tasks = [
        Task("innerprobe.scale:apex_shard", {**base, "ids": list(range(a, a + 6)), "rows": [a, a + 6]}, pay)
        for a in (0, 6, 12)
    ]
    tasks.append(
        Task("innerprobe.scale:apex_shard", {**base, "config": {"samples": 0}, "ids": [0], "rows": [0, 1]}, pay)
    )
    with pytest.raises(TaskFailed) as e:
        run_tasks(tasks, store=tmp_path, shared={"model": model, "x": x}, retries=1)
    assert set(e.value.failures) == {3} and sorted(e.value.results) == [0, 1, 2]
    assert "samples" in str(e.value) and len(list(tmp_path.glob("*.npz"))) == 3


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"executor": "dask"}, "unknown executor"),
        ({"workers": 0}, "workers"),
        ({"address": "auto"}, "needs --executor ray"),
        ({"executor": "ray", "address": " "}, "empty"),
    ],
)
def test_executor_options_are_refused_never_replaced(kw, match):
    with pytest.raises(ConfigError, match=match):
        get_executor(**kw)


def test_importing_innerprobe_never_imports_ray():
    code = "import sys, innerprobe, innerprobe.scale, innerprobe.core.tasks; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- a real local Ray cluster
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_equals_local_for_apex_edges_and_a_study(ray_cluster, tmp_path, monkeypatch):
    model, x = mlp(), data()
    same_result(scale.apex(model, x, SIGMAS, shard=5, executor="ray", **OPTS), apex(model, x, SIGMAS, **OPTS))
    tf, x_r, x_c = tf_pair()
    _, local = scale.edge_effects(tf, x_r, x_c, shard=9)
    _, remote = scale.edge_effects(tf, x_r, x_c, shard=9, executor="ray")
    np.testing.assert_array_equal(local, remote)
    a = scale.studies(["apex-transition"], tmp_path / "local", seeds=1, quick=True)
    b = scale.studies(["apex-transition"], tmp_path / "ray", seeds=1, quick=True, executor="ray")
    rows_a, rows_b = json.loads(a[0]["rows"]), json.loads(b[0]["rows"])
    assert rows_a and rows_a == rows_b
