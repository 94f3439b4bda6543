"""Every method x model: the model comes back untouched (weights and buffers bitwise, train/eval
modes, requires_grad, no hooks added, a user's own hooks kept), and so does the process's global
state (torch / numpy / Python RNGs, thread count, default dtype, grad and inference mode, the
torch-function and dispatch mode stacks), after success and after failures induced inside the
forward pass and by bad input (issue 14; docs/cli.md "Guarantees").

``HookSession(model, eval=None)`` leaves train/eval modes as they are: a forward inside it on a
train-mode model with BatchNorm updates the running statistics exactly as the user's own forward
would (it is the user's forward); every method uses ``eval=True`` and so never changes them."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe import HookSession, InnerprobeError, count_hooks
from innerprobe.zoo.transformer import build_transformer


class Boom(Exception):
    pass


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(inplace=True), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )


def tiny_transformer():
    torch.manual_seed(0)
    return build_transformer({"vocab": 11, "n_ctx": 8, "d_model": 8, "n_heads": 2, "d_head": 4, "n_layers": 2})


def run_apex(model, x):
    from innerprobe.perturb import apex

    return apex(model, x, [0.0, 0.5, 2.0], samples=4, seed=0)


def run_scan(model, x):
    from innerprobe.perturb import backdoor_scan

    return backdoor_scan(model, x, samples=4, sigmas=[0.5, 2.0])


def attribution(cls, **kw):
    def run(model, x):
        return cls(model, **kw).attribute(x, target=0)

    run.__name__ = f"run_{cls.__name__}"
    return run


def run_patch_run(model, x):
    from innerprobe.patch import patch_run

    return patch_run(model, "2", x, torch.flip(x, dims=[0]))


def run_hook_capture(model, x):
    with HookSession(model, eval=True) as hs:
        cap = hs.capture("2")[0]
        hs.run(x)
    return cap.value


def run_patch(model, x):
    from innerprobe.core.graph import transformer_graph
    from innerprobe.patch.path import evaluate_edges, prepare

    graph = transformer_graph(model)
    runs = prepare(graph, x, torch.roll(x, 1, dims=0))
    masks = torch.stack([torch.ones(len(graph.edges)), torch.zeros(len(graph.edges))])
    return evaluate_edges(graph, runs, masks)


def run_eap(model, x):
    from innerprobe.core.graph import transformer_graph
    from innerprobe.patch import eap_scores
    from innerprobe.patch.path import prepare

    graph = transformer_graph(model)
    runs = prepare(graph, x, torch.roll(x, 1, dims=0))
    return eap_scores(graph, runs, lambda logits: logits[..., -1, 0].mean(), ig_steps=2)


def image_input(model):
    return torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def token_input(model):
    return torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))


def _table():
    from innerprobe.pullback import (
        ExcitationPullback,
        Gradient,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        PullbackAscent,
        SmoothGrad,
    )

    rows = [("apex", run_apex, m, image_input) for m in (mlp, cnn)]
    rows += [("pullback", attribution(ExcitationPullback, temperature=0.3), m, image_input) for m in (mlp, cnn)]
    rows += [
        ("attribution", attribution(c, **kw), cnn, image_input)
        for c, kw in (
            (Gradient, {}),
            (InputXGradient, {}),
            (IntegratedGradients, {"steps": 4}),
            (SmoothGrad, {"n_samples": 2}),
            (GuidedBackprop, {}),
            (PullbackAscent, {"steps": 2}),
        )
    ]
    rows += [
        ("scan", run_scan, mlp, image_input),
        ("patch_run", run_patch_run, cnn, image_input),
        ("hooks", run_hook_capture, mlp, image_input),
        ("patch", run_patch, tiny_transformer, token_input),
        ("eap", run_eap, tiny_transformer, token_input),
    ]
    return rows


TABLE = _table()


def snapshot(m):
    return (
        {k: v.clone() for k, v in m.state_dict(keep_vars=False).items()},
        [x.training for x in m.modules()],
        [p.requires_grad for p in m.parameters()],
    )


def assert_untouched(m, snap, n_hooks):
    state, modes, grads = snap
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [x.training for x in m.modules()] == modes
    assert [p.requires_grad for p in m.parameters()] == grads
    assert count_hooks(m) == n_hooks


def global_state() -> dict:
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "threads": torch.get_num_threads(),
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "function_modes": len(_get_current_function_mode_stack()),
        "dispatch_modes": len(_get_current_dispatch_mode_stack()),
    }


def assert_same_global_state(before: dict) -> None:
    after = global_state()
    for key, want in before.items():
        got = after[key]
        same = (
            torch.equal(got, want)
            if isinstance(want, torch.Tensor)
            else (np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want)
        )
        assert same, f"global state {key!r} changed: {want!r} -> {got!r}"


@pytest.mark.parametrize(
    "name,method,make,inputs", TABLE, ids=[f"{t[0]}-{t[1].__name__[4:]}-{t[2].__name__}" for t in TABLE]
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_and_process_untouched_after_success_and_failure(name, method, make, inputs, mode):
    model = make()
    model.train(mode == "train")
    children = list(model.modules())
    children[-1].training = not children[-1].training  # a mixed-mode model
    armed = {"on": False}

    def user_hook(mod, args, out):  # the user's own hook: must survive, and can fail on demand
        if armed["on"]:
            raise Boom("induced failure inside the forward pass")

    handle = children[2].register_forward_hook(user_hook)
    n_hooks = count_hooks(model)
    snap = snapshot(model)
    x = inputs(model)
    torch.manual_seed(1234)
    state = global_state()

    method(model, x)
    assert_untouched(model, snap, n_hooks)
    assert_same_global_state(state)

    armed["on"] = True
    with pytest.raises(Boom):
        method(model, x)
    armed["on"] = False
    assert_untouched(model, snap, n_hooks)
    assert_same_global_state(state)

    with pytest.raises(InnerprobeError):  # bad input: a clear innerprobe error, not a torch traceback
        bad = x[:, :2] if x.dim() == 2 else x[..., :1, :1]
        method(model, bad.float() if x.dim() == 2 else bad.long())
    assert_untouched(model, snap, n_hooks)
    assert_same_global_state(state)
    handle.remove()
    assert count_hooks(model) == 0


def test_eval_none_leaves_train_mode_batchnorm_updating_like_the_users_own_forward():
    x = image_input(None)
    plain, hooked, guarded = cnn().train(), cnn().train(), cnn().train()
    plain(x)
    with HookSession(hooked, eval=None) as hs:
        hs.capture("1")
        hs.run(x)
    for k, v in plain.state_dict().items():  # running stats moved, exactly as in the plain forward
        assert torch.equal(v, hooked.state_dict()[k]), k
    assert not torch.equal(hooked[1].running_mean, cnn()[1].running_mean)
    before = {k: v.clone() for k, v in guarded.state_dict().items()}
    with HookSession(guarded, eval=True) as hs:
        hs.run(x)
        assert not guarded.training
    assert guarded.training and all(torch.equal(v, guarded.state_dict()[k]) for k, v in before.items())
