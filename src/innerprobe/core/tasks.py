"""Long runs as lists of pure tasks, run in-process, on a local process pool or on a Ray cluster (docs/scale.md).

A :class:`Task` names a function by import path (``"innerprobe.scale:apex_shard"``), the JSON-able arguments
that identify its work (model hash, method, config, data shard) and, apart from those, large inputs
(``payload``: arrays, a model) that the identifying arguments already name by their hashes. Its result is a
dict of numpy arrays and JSON-able scalars, stored under the task's content hash in a :class:`Store`: a rerun
skips every task whose file exists (resume), and because results merge in task order the merged result is
the same whatever the executor, the number of workers or the order in which tasks finish.

Executors: ``local`` (in-process with one worker; a spawn process pool with more) and ``ray`` (an optional
extra: ``pip install innerprobe[ray]``; a local Ray instance unless ``address`` names a cluster, e.g.
``HOST:PORT`` or ``auto``). Shared payload values (a model, the whole input batch) are sent once per worker,
not once per task. A failing task is retried ``retries`` times, then reported with its error by
:class:`TaskFailed` after every other task has finished and been stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InnerprobeError
from ..progress import track

EXECUTORS = ("local", "ray")
_META = "__meta__"


class TaskFailed(InnerprobeError):
    """Some tasks failed after their retries; ``failures`` maps task index -> error text, ``results`` the rest."""

    def __init__(self, failures: dict[int, str], results: dict[int, dict], tasks: list[Task]):
        first = next(iter(failures.items()))
        super().__init__(
            f"{len(failures)} of {len(tasks)} tasks failed (task {first[0]}: {first[1]})",
            hint="the finished tasks are kept; rerun the same command to retry only the failed ones",
        )
        self.failures, self.results, self.tasks = failures, results, tasks


@dataclass(frozen=True)
class Shared:
    """A payload value sent once per worker (a model, a whole input batch); tasks refer to it by ``name``."""

    name: str


@dataclass
class Task:
    fn: str
    args: dict
    payload: dict = field(default_factory=dict)
    resources: dict = field(default_factory=lambda: {"num_cpus": 1})

    @property
    def key(self) -> str:
        """The content hash of what identifies the work: the function and its arguments."""
        text = json.dumps({"fn": self.fn, "args": self.args}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def array_hash(*arrays) -> str:
    """A short content hash of arrays or tensors (dtype, shape and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def module_hash(model) -> str:
    """A content hash of a module's parameters and buffers (names included)."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(array_hash(t).encode())
    return h.hexdigest()[:16]


class Store:
    """Task results as ``.npz`` files named by the task's key (loaded without pickle), written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot use {str(self.folder)!r} as a task store: {e.strerror or e}", hint="give a writable folder"
            ) from None

    def path(self, task: Task) -> Path:
        return self.folder / f"{task.key}.npz"

    def load(self, task: Task) -> dict | None:
        path = self.path(task)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files if k != _META}
                out.update(json.loads(str(z[_META])))
        except (OSError, ValueError, KeyError):
            return None  # a damaged file is recomputed
        return out

    def save(self, task: Task, result: dict) -> None:
        arrays = {k: np.asarray(v) for k, v in result.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
        tmp = self.folder / f".{task.key}.{_HOST}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays, **{_META: np.array(json.dumps(meta))})
        tmp.replace(self.path(task))
        self._drop_stale(task)

    def _drop_stale(self, task: Task) -> None:
        """Remove this key's temp files left by writers on this host that are no longer alive (a killed run)."""
        for old in self.folder.glob(f".{task.key}.{_HOST}.*.tmp.npz"):
            pid = old.name[len(f".{task.key}.{_HOST}.") : -len(".tmp.npz")]
            if pid.isdigit() and not _alive(int(pid)):
                old.unlink(missing_ok=True)


_HOST = "".join(c if c.isalnum() or c == "-" else "_" for c in platform.node()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- running one task (any process)
_SHARED: dict[str, object] = {}


def _init_worker(shared: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _SHARED.clear()
    _SHARED.update(shared)


def _resolve(fn: str) -> Callable:
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def execute(task: Task, shared: dict | None = None) -> dict:
    """Run one task here: import its function, fill in shared payload values, call it."""
    pool = _SHARED if shared is None else shared
    payload = {k: pool[v.name] if isinstance(v, Shared) else v for k, v in task.payload.items()}
    result = _resolve(task.fn)(**task.args, **payload)
    if not isinstance(result, dict):
        raise TypeError(f"task function {task.fn} returned {type(result).__name__}, not a dict")
    return result


def _execute_safe(task: Task, shared: dict | None = None) -> tuple[bool, object]:
    try:
        return True, execute(task, shared)
    except Exception as e:  # noqa: BLE001 - a worker reports any failure of user code as text, never dies
        return False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"


# ----------------------------------------------------------------------------- executors
class LocalExecutor:
    """In-process (one worker) or a spawn process pool (``workers`` > 1), one torch thread per worker."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    @contextlib.contextmanager
    def session(self, shared: dict):
        if self.workers == 1:
            yield lambda tasks: ((i, *_execute_safe(t, shared)) for i, t in tasks)
            return
        ctx = get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(shared,)) as pool:
            yield lambda tasks: _as_completed(pool, tasks)


def _as_completed(pool, tasks) -> Iterator[tuple[int, bool, object]]:
    futures = {pool.submit(_execute_safe, t): i for i, t in tasks}
    while futures:
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        for f in done:
            yield (futures.pop(f), *f.result())


class RayExecutor:
    """Tasks as Ray remote calls; starts a local Ray instance unless ``address`` names a running cluster."""

    def __init__(self, workers: int | None = None, address: str | None = None):
        self.workers, self.address = workers, address

    @contextlib.contextmanager
    def session(self, shared: dict):
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray", hint="pip install 'innerprobe[ray]'") from None
        started = not ray.is_initialized()
        if started:
            kw = (
                {"address": self.address}
                if self.address
                else {"num_cpus": self.workers, "include_dashboard": False, "object_store_memory": 256 * 2**20}
            )
            ray.init(log_to_driver=False, ignore_reinit_error=True, **kw)
        refs = {k: ray.put(v) for k, v in shared.items()}
        remote = ray.remote(_ray_run)
        try:
            yield lambda tasks: _ray_completed(ray, remote, refs, tasks)
        finally:
            if started:
                ray.shutdown()


def _ray_run(task: Task, names: list, ids: list, *values) -> tuple[bool, object]:
    key = tuple(ids)
    if _SHARED.get("__key__") != key:  # shared values are deserialised once per worker process and run
        _init_worker(dict(zip(names, values)))
        _SHARED["__key__"] = key
    return _execute_safe(task, _SHARED)


def _ray_completed(ray, remote, refs: dict, tasks) -> Iterator[tuple[int, bool, object]]:
    names = sorted(refs)
    pending = {}
    for i, t in tasks:
        opts = {
            "num_cpus": t.resources.get("num_cpus", 1),
            "num_gpus": t.resources.get("num_gpus", 0),
            "max_retries": 0,
        }
        ids = [refs[n].hex() for n in names]
        pending[remote.options(**opts).remote(t, names, ids, *[refs[n] for n in names])] = i
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                yield (i, *ray.get(ref))
            except Exception as e:  # noqa: BLE001 - a worker that died is a failed task, not a crashed run
                yield i, False, f"{type(e).__name__}: {e}"


def get_executor(executor: str = "local", workers: int | None = None, address: str | None = None):
    """The executor named ``executor`` ('local' or 'ray'); options are checked, never replaced."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}", hint=f"use one of: {', '.join(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024):
        raise ConfigError(f"workers must be a whole number from 1 to 1024, got {workers!r}")
    if address is not None and executor != "ray":
        raise ConfigError("--address joins a Ray cluster: it needs --executor ray")
    if address is not None and not str(address).strip():
        raise ConfigError("the Ray address is empty", hint="give HOST:PORT or 'auto', or omit it for a local instance")
    if executor == "ray":
        return RayExecutor(workers, address)
    return LocalExecutor(workers or 1)


def run_tasks(
    tasks: list[Task],
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    store: str | Path | None = None,
    shared: dict | None = None,
    retries: int = 1,
    progress: bool | None = None,
    label: str = "tasks",
) -> list[dict]:
    """Run ``tasks`` and return their results in task order (docs/scale.md).

    ``store`` keeps each result under its task's content hash, so a rerun skips finished tasks; ``shared``
    holds payload values referred to by :class:`Shared` (sent once per worker); a task that fails is retried
    ``retries`` times and then reported by :class:`TaskFailed`, raised after all the others are stored.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigError(f"retries must be a whole number from 0 to 10, got {retries!r}")
    ex = get_executor(executor, workers, address)
    st = Store(store) if store is not None else None
    results: dict[int, dict] = {}
    if st is not None:
        results = {i: r for i, t in enumerate(tasks) if (r := st.load(t)) is not None}
    todo = [(i, t) for i, t in enumerate(tasks) if i not in results]
    failures: dict[int, str] = {}
    if todo:
        with ex.session(shared or {}) as run:
            for attempt in range(retries + 1):
                failures = {}
                what = label if attempt == 0 else f"{label} (retry {attempt})"
                for i, ok, value in track(run(todo), what, total=len(todo), enable=progress):
                    if ok:
                        results[i] = value
                        if st is not None:
                            st.save(tasks[i], value)
                    else:
                        failures[i] = str(value).strip().splitlines()[0]
                todo = [(i, tasks[i]) for i in sorted(failures)]
                if not todo:
                    break
    if failures:
        raise TaskFailed(failures, results, tasks)
    return [results[i] for i in range(len(tasks))]
