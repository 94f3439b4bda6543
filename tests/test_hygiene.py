"""Every method x model: the model comes back untouched (weights and buffers bitwise, train/eval
modes, requires_grad, no hooks added, a user's own hooks kept), after success and after failures
induced inside the forward pass and by bad input."""
import pytest
import torch
from torch import nn

from innerprobe import InnerprobeError, count_hooks
from innerprobe.zoo.transformer import build_transformer


class Boom(Exception):
    pass


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(inplace=True), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def tiny_transformer():
    torch.manual_seed(0)
    return build_transformer({"vocab": 11, "n_ctx": 8, "d_model": 8, "n_heads": 2, "d_head": 4, "n_layers": 2})


def run_apex(model, x):
    from innerprobe.perturb import apex

    return apex(model, x, [0.0, 0.5, 2.0], samples=4, seed=0)


def run_pullback(model, x):
    from innerprobe.pullback import ExcitationPullback

    return ExcitationPullback(model, temperature=0.3).attribute(x, target=0)


def run_patch(model, x):
    from innerprobe.core.graph import transformer_graph
    from innerprobe.patch.path import edge_mask, evaluate_edges, prepare

    graph = transformer_graph(model)
    runs = prepare(graph, x, torch.roll(x, 1, dims=0))
    masks = torch.stack([torch.ones(len(graph.edges)), torch.zeros(len(graph.edges))])
    del edge_mask
    return evaluate_edges(graph, runs, masks)


def image_input(model):
    return torch.rand(4, 1, 4, 4)


def token_input(model):
    return torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))


TABLE = [
    ("apex", run_apex, mlp, image_input),
    ("apex", run_apex, cnn, image_input),
    ("pullback", run_pullback, mlp, image_input),
    ("pullback", run_pullback, cnn, image_input),
    ("patch", run_patch, tiny_transformer, token_input),
]


def snapshot(m):
    return ({k: v.clone() for k, v in m.state_dict(keep_vars=False).items()},
            [x.training for x in m.modules()], [p.requires_grad for p in m.parameters()])


def assert_untouched(m, snap, n_hooks):
    state, modes, grads = snap
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [x.training for x in m.modules()] == modes
    assert [p.requires_grad for p in m.parameters()] == grads
    assert count_hooks(m) == n_hooks


@pytest.mark.parametrize("name,method,make,inputs", TABLE, ids=[f"{t[0]}-{t[2].__name__}" for t in TABLE])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_untouched_after_success_and_failure(name, method, make, inputs, mode):
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

    method(model, x)
    assert_untouched(model, snap, n_hooks)

    armed["on"] = True
    with pytest.raises(Boom):
        method(model, x)
    armed["on"] = False
    assert_untouched(model, snap, n_hooks)

    with pytest.raises(InnerprobeError):  # bad input: a clear innerprobe error, not a torch traceback
        bad = x[:, :2] if x.dim() == 2 else x[..., :1, :1]
        method(model, bad.float() if name == "patch" else bad.long())
    assert_untouched(model, snap, n_hooks)
    handle.remove()
    assert count_hooks(model) == 0
