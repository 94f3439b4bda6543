"""Issue 14, core side: captures hold the value as it was at the site (item 2), HookSession.run and
the shared checks turn wrong shapes, dtypes, devices, NaN and empty batches into innerprobe errors
(item 10), and seeds out of range are refused (item 9)."""

import pytest
import torch
from torch import nn

from innerprobe import HookSession, run_with_cache
from innerprobe.core.checks import (
    SEED_MAX,
    call_model,
    check_float,
    check_inputs,
    check_int,
    check_seed,
)
from innerprobe.errors import ConfigError, ModelError, SiteError


class Block(nn.Module):
    """torchvision's BasicBlock shape: bn2's output is modified in place by the residual add and the ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Linear(4, 4)
        self.bn2 = nn.BatchNorm1d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.bn2(self.conv(x))
        out += identity
        out = self.relu(out)
        return out


def block_and_input():
    torch.manual_seed(0)
    return Block().eval(), torch.randn(16, 4)


def test_capture_holds_the_value_before_later_in_place_ops():
    b, x = block_and_input()
    with torch.no_grad():
        want = b.bn2(b.conv(x))
    assert want.min() < 0
    with HookSession(b) as hs:
        cap = hs.capture("bn2")[0]
        hs.run(x)
    assert torch.equal(cap.value, want)
    _, cache = run_with_cache(b, "bn2", x)
    assert torch.equal(cache["bn2"], want)
    with torch.inference_mode():  # inference tensors have no version counter: the clone still protects them
        _, cache = run_with_cache(b, "bn2", x)
    assert torch.equal(cache["bn2"], want)


@pytest.mark.parametrize("kw", [{"clone": False}, {"detach": False}])
def test_uncloned_capture_modified_in_place_is_refused_not_returned(kw):
    b, x = block_and_input()
    with HookSession(b) as hs:
        cap = hs.capture("bn2", **kw)[0]
        hs.run(x)
    assert cap.stale() == [0]
    with pytest.raises(SiteError, match="modified in place"):
        _ = cap.value


def test_uncloned_capture_of_an_untouched_site_is_fine_and_keeps_the_graph():
    b, x = block_and_input()
    with HookSession(b) as hs:
        cap = hs.capture("conv", detach=False)[0]
        out = hs.run(x)
    (g,) = torch.autograd.grad(out.sum(), cap.value)
    assert g.shape == (16, 4)


def test_came_from_names_the_tensor_a_capture_was_taken_from():
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Sigmoid()).eval()
    with HookSession(m) as hs:
        hidden, last = hs.capture("1")[0], hs.capture("3")[0]
        y = hs.run(torch.rand(2, 3))
    assert last.came_from(0, y) and not hidden.came_from(0, y)


def test_run_on_wrong_shape_dtype_device_is_a_model_error():
    m = nn.Sequential(nn.Linear(4, 3))
    for bad in (torch.randn(2, 5), torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, device="meta")):
        with HookSession(m) as hs, pytest.raises(ModelError, match="forward failed on inputs"):
            hs.run(bad)
    with pytest.raises(ModelError, match="shape \\(2, 5\\)"):
        call_model(m, torch.randn(2, 5))


def test_a_hook_functions_own_error_is_not_relabelled():
    m = nn.Sequential(nn.Linear(4, 3))

    def boom(v, rs):
        raise RuntimeError("mine")

    with HookSession(m) as hs, pytest.raises(RuntimeError, match="mine"):
        hs.edit("0", boom)
        hs.run(torch.randn(2, 4))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(0, 4), "empty batch"),
        (torch.tensor(1.0), "batch axis"),
        (torch.randn(2, 4, dtype=torch.complex64), "complex"),
        (torch.randn(2, 4, device="meta"), "meta device"),
        (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), "NaN"),
        (torch.randn(2, 4, dtype=torch.float64), "float64 but the model's weights are float32"),
        ([[1.0, 2.0]], "must be a torch.Tensor"),
    ],
)
def test_check_inputs_refuses_by_name(bad, match):
    with pytest.raises(ConfigError, match=match):
        check_inputs(bad, nn.Linear(4, 3))


def test_check_inputs_meta_model():
    with torch.device("meta"):
        m = nn.Linear(4, 3)
    with pytest.raises(ModelError, match="meta device"):
        check_inputs(torch.randn(2, 4), m)


def test_range_checks_refuse_never_replace():
    assert check_int(3, "K", lo=1) == 3
    for bad in (0, -1, True, 2.5, "3", None):
        with pytest.raises(ConfigError):
            check_int(bad, "K", lo=1)
    for bad in (float("nan"), float("inf"), -1.0, "x"):
        with pytest.raises(ConfigError):
            check_float(bad, "sigma", lo=0.0)
    assert check_seed("42") == 42 and check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 18446744073709551616, "x", "99999999999999999999999", "1.5"):
        with pytest.raises(ConfigError, match="seed"):
            check_seed(bad)
