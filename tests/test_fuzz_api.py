"""Property-based fuzz of the public Python API (issue 14): wrong shapes, dtypes, devices, NaN/inf,
empty batches, non-tensors, junk model specs and seeds, garbage / pickled / truncated weight files.

Every call must either raise an innerprobe error (a one-line message) or give a correct result
(the right shape, finite), and leave the model exactly as it came in. Budget: see fuzz_support.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fuzz_support import count, examples
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from innerprobe import HookSession, InnerprobeError, count_hooks, run_with_cache


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).eval()


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    ).train()


MODELS = {"mlp": mlp(), "cnn": cnn()}
GOOD_SHAPE = (1, 4, 4)


@st.composite
def inputs(draw):
    """(x, tail): a tensor (or not) and, when a method must accept it, its shape after the batch axis (else ())."""
    kind = draw(st.sampled_from(["tensor"] * 6 + ["list", "array", "none", "str"]))
    if kind == "list":
        return [[0.0] * 16], ()
    if kind == "array":
        return np.zeros((2, *GOOD_SHAPE), np.float32), ()
    if kind == "none":
        return None, ()
    if kind == "str":
        return "x.npy", ()
    batch = draw(st.sampled_from([0, 1, 2, 3]))
    tail = draw(st.sampled_from([GOOD_SHAPE] * 4 + [(1, 5, 5), (16,), (4, 4), (2, 4, 4), ()]))
    dtype = draw(
        st.sampled_from([torch.float32] * 4 + [torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64])
    )
    value = draw(st.sampled_from(["rand"] * 4 + ["nan", "inf", "huge", "zeros"]))
    device = draw(st.sampled_from(["cpu"] * 6 + ["meta"]))
    shape = (batch, *tail) if tail != () or batch else ()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 3))))
    if value == "nan" and x.numel():
        x.view(-1)[0] = float("nan")
    elif value == "inf" and x.numel():
        x.view(-1)[-1] = float("inf")
    elif value == "huge":
        x = x * 1e30
    elif value == "zeros":
        x = torch.zeros_like(x)
    x = x.to(dtype).to(device)
    valid = batch > 0 and dtype == torch.float32 and device == "cpu" and (value not in ("nan", "inf") or x.numel() == 0)
    return x, valid and tail  # the tail shape decides per model (accepts())


def accepts(model_name: str, tail: tuple) -> bool:
    """Whether the model takes inputs [N, *tail]: the MLP flattens any 16 values, the CNN needs [N, 1, 4, 4]."""
    return tail == GOOD_SHAPE if model_name == "cnn" else int(np.prod(tail)) == 16


def _methods():
    from innerprobe.patch import patch_run
    from innerprobe.perturb import apex
    from innerprobe.pullback import (
        ExcitationPullback,
        Gradient,
        InputXGradient,
        IntegratedGradients,
        PullbackAscent,
        SmoothGrad,
    )

    def hook_run(m, x):
        with HookSession(m, eval=True) as hs:
            return hs.run(x)

    def attr(cls, **kw):
        return lambda m, x: cls(m, **kw).attribute(x, target=0)

    def a(m, x):
        return apex(m, x, [0.0, 1.0], samples=2, seed=0).arrays["counts"]

    return {
        "HookSession.run": (hook_run, "raw"),
        "run_with_cache": (lambda m, x: run_with_cache(m, "2", x)[1]["2"], "raw"),
        "patch_run": (
            lambda m, x: patch_run(m, "2", x, x.flip(0) if isinstance(x, torch.Tensor) and x.dim() else x),
            "raw",
        ),
        "apex": (a, "any"),
        "Gradient": (attr(Gradient), "like_x"),
        "InputXGradient": (attr(InputXGradient), "like_x"),
        "IntegratedGradients": (attr(IntegratedGradients, steps=3), "like_x"),
        "SmoothGrad": (attr(SmoothGrad, n_samples=2), "like_x"),
        "ExcitationPullback": (attr(ExcitationPullback, temperature=0.3), "like_x"),
        "PullbackAscent": (attr(PullbackAscent, steps=1), "like_x"),
    }


METHODS = _methods()


def snapshot(m):
    return (
        {k: v.clone() for k, v in m.state_dict().items()},
        [x.training for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
        count_hooks(m),
    )


def assert_untouched(m, snap):
    state, modes, grads, hooks = snap
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items()), "weights or buffers changed"
    assert [x.training for x in m.modules()] == modes and [p.requires_grad for p in m.parameters()] == grads
    assert count_hooks(m) == hooks


def check_outcome(name, fn, expect, model, x, valid):
    snap = snapshot(model)
    try:
        out = fn(model, x)
    except InnerprobeError as e:
        assert e.message.strip() and "\n" not in e.message, f"{name}: not a one-line message: {e.message!r}"
        assert "Traceback" not in str(e)
        assert_untouched(model, snap)
        return "refused"
    assert_untouched(model, snap)
    if expect == "raw":  # a plain forward: the model's own answer (NaN in, NaN out) is the correct result
        return "ok"
    assert valid, f"{name} accepted a bad input without a word: {describe(x)}"
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    assert bool(torch.isfinite(out.float()).all()), f"{name} returned non-finite values for {describe(x)}"
    if expect == "like_x":
        assert out.shape == x.shape
    elif expect == "logits":
        assert out.shape == (x.shape[0], 3)
    return "ok"


def describe(x):
    return f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__


@pytest.mark.parametrize("name", list(METHODS))
@examples(5, 100)
@given(data=inputs(), model_name=st.sampled_from(sorted(MODELS)))
def test_methods_refuse_or_answer_correctly(name, data, model_name):
    x, valid = data
    valid = bool(valid) and accepts(model_name, valid)
    count(f"api:{name}")
    fn, expect = METHODS[name]
    check_outcome(name, fn, expect, MODELS[model_name], x, valid)


SPEC_PIECES = st.sampled_from(
    [
        "digits-mlp",
        "digits-cnn",
        "nope",
        "x.py",
        "a.py:make",
        "/",
        ".",
        "",
        " ",
        "@",
        "@0",
        "@-1",
        "@x",
        "@99999999999999999999999",
        "@18446744073709551616",
        "a" * 300,
        "\x00",
        "\udcff",
        ":",
        "..",
        "~",
        "digits-mlp@1",
    ]
)


class _Reached(Exception):
    pass


@examples(30, 500)
@given(spec=st.one_of(st.lists(SPEC_PIECES, min_size=1, max_size=3).map("".join), st.text(max_size=40)))
def test_model_specs_refuse_or_reach_the_zoo(spec, tmp_path_factory, monkeypatch_session):
    from innerprobe.zoo.loading import load_model

    count("api:load_model")
    try:
        load_model(spec)
    except InnerprobeError as e:
        assert "\n" not in e.message and len(e.message) < 600
    except _Reached:
        pass


@pytest.fixture(scope="module")
def monkeypatch_session(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    from innerprobe import zoo

    mp.setenv("INNERPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))

    def fake_load(name, seed=0, **kw):  # a valid name and seed would train: stop here instead
        from innerprobe.zoo.cache import entry_dir

        entry_dir(name, seed, "0" * 16)
        raise _Reached

    mp.setattr(zoo, "load", fake_load)
    yield mp
    mp.undo()


def _weight_bytes(kind: str, model: nn.Module) -> bytes:
    from safetensors.torch import save

    good = save({k: v.contiguous() for k, v in model.state_dict().items()})
    return {
        "good": good,
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": b"\x89garbage\x00" * 7,
        "pickle": pickle.dumps({"weight": [1, 2, 3]}),
        "wrong_shapes": save({"1.weight": torch.zeros(2, 2)}),
        "json_header_only": good[:8],
    }[kind]


@examples(20, 300)
@given(
    kind=st.sampled_from(["good", "truncated", "empty", "garbage", "pickle", "wrong_shapes", "json_header_only"]),
    suffix=st.sampled_from([".safetensors", ".pt", ".bin", "", ".safetensors/"]),
)
def test_weight_files_refuse_or_load(kind, suffix, tmp_path_factory):
    from innerprobe.zoo.loading import load_safetensors_into

    count("api:load_safetensors_into")
    model = mlp()
    folder = tmp_path_factory.mktemp("w")
    path = folder / ("w" + suffix.rstrip("/"))
    if suffix.endswith("/"):
        path.mkdir()
    else:
        path.write_bytes(_weight_bytes(kind, model))
    snap = snapshot(model)
    try:
        load_safetensors_into(model, path)
    except InnerprobeError as e:
        assert "\n" not in e.message
        assert_untouched(model, snap)
        return
    assert kind == "good" and suffix == ".safetensors", f"loaded a {kind} file {path.name}"
