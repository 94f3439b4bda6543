"""APEX engine invariants (docs/apex.md, 'How it is computed'), on tiny models built here."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe import ConfigError, ModelError, SiteError, count_hooks
from innerprobe.perturb import Engine, apex, escape_bisect, escape_noise, mix_seed, sample_dependence
from innerprobe.perturb import sweep as sweep_mod


class Recorder(nn.Module):
    """Identity that remembers what went through it (to look at activations inside noisy runs)."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x):
        self.seen = x.clone()
        return x


def mlp(seed=0, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 5)
    )


def cnn(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )
    m[1].running_mean.uniform_(-0.1, 0.1)
    m[1].running_var.uniform_(0.5, 1.5)
    return m.eval()


def data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, 4, generator=g)


def state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        count_hooks(model),
    )


def same_state(a, b):
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


# ----------------------------------------------------------------------------- sigma = 0
@pytest.mark.parametrize("prefix", [True, False])
def test_sigma_zero_gives_clean_logits_bitwise(prefix):
    m, x = mlp(), data()
    eng = Engine(m, x, samples=3, prefix=prefix)
    counts, logits = eng.counts([0.0], keep_logits=True)
    with torch.no_grad():
        clean = m(x)
    assert torch.equal(logits[:, 0], clean[:, None].expand(-1, 3, -1))
    assert (counts[np.arange(len(x)), 0, clean.argmax(-1).numpy()] == 3).all()


def test_sigma_zero_bitwise_cnn_with_batchnorm_all_kinds():
    m, x = cnn(), torch.rand(4, 1, 6, 6)
    with torch.no_grad():
        clean = m(x)
    for kind in ("gaussian", "multiplicative", "dropout"):
        _, logits = Engine(m, x, samples=2, noise=kind, prefix=False).counts([0.0], keep_logits=True)
        assert torch.equal(logits[:, 0], clean[:, None].expand(-1, 2, -1)), kind
    # noise really does something at sigma > 0
    _, logits = Engine(m, x, samples=2).counts([0.5], keep_logits=True)
    assert not torch.allclose(logits[:, 0], clean[:, None].expand(-1, 2, -1))


def test_default_sites_are_hidden_nonlinearities_never_logits():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Sigmoid())  # last activation = the output
    eng = Engine(m, torch.rand(2, 3), samples=2)
    assert [str(r) for r in eng.rsites] == ["1"]
    with pytest.raises(SiteError, match="logits"):
        Engine(m, torch.rand(2, 3), sites=["3"], samples=2)


# ----------------------------------------------------------------------------- upstream, std
def test_noise_leaves_upstream_unchanged_and_changes_downstream():
    torch.manual_seed(0)
    up, down = Recorder(), Recorder()
    m = nn.Sequential(nn.Linear(5, 8), up, nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), down, nn.Linear(8, 3))
    x = torch.randn(4, 5)
    eng = Engine(m, x, sites=["4"], samples=7, prefix=False)
    eng.counts([1.0])
    with torch.no_grad():  # the same rows through the clean model (same batch shape, so bitwise comparable)
        clean_up = m[0](x.repeat_interleave(7, 0))
        clean_down = m[4](m[3](m[2](clean_up)))
    assert torch.equal(up.seen, clean_up)
    assert not torch.allclose(down.seen, clean_down)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_empirical_noise_std_matches_sigma(sigma):
    rec = Recorder()
    m = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), rec, nn.Linear(64, 3))
    x = torch.randn(5, 6)
    eng = Engine(m, x, sites=["1"], samples=200, prefix=False)
    eng.counts([sigma])
    with torch.no_grad():
        clean = torch.relu(m[0](x)).repeat_interleave(200, 0)
    noise = (rec.seen - clean).double()
    n = noise.numel()  # 64000 draws: std estimate has relative SE 1/sqrt(2n) = 0.3%
    assert abs(noise.std().item() / sigma - 1) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 5 * sigma / math.sqrt(n)


def test_relative_mode_scales_sigma_by_site_rms():
    m, x = mlp(), data()
    rel = Engine(m, x, sites=["2"], samples=5, relative=True)
    rms = rel.rms[0]
    with torch.no_grad():
        h = torch.relu(m[1](m[0](x)))
    assert abs(rms - h.pow(2).mean().sqrt().item()) < 1e-6
    _, a = rel.counts([0.8], keep_logits=True)
    _, b = Engine(m, x, sites=["2"], samples=5).counts([0.8 * rms], keep_logits=True)
    assert torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- batching, CRN, prefix
def looped_reference(model, x, sigmas, K, site_names, seed=0):
    """Slow reference: one forward per (input, sigma, pass), a plain hook adding sigma * xi[k]."""
    mods = dict(model.named_modules())
    out = np.zeros((len(x), len(sigmas), 5), dtype=np.int64)
    logits = torch.zeros(len(x), len(sigmas), K, 5)
    g = torch.Generator()
    for i in range(len(x)):
        xis = {}
        for j, name in enumerate(site_names):
            with torch.no_grad():
                h = {}
                hd = mods[name].register_forward_hook(lambda mod, a, o, h=h: h.update(s=o.shape[1:]))
                model(x[i : i + 1])
                hd.remove()
            g.manual_seed(mix_seed(seed, i, j, 0))
            xis[name] = torch.randn((K, *h["s"]), generator=g)
        for s, sig in enumerate(sigmas):
            for k in range(K):
                hds = [
                    mods[n].register_forward_hook(lambda mod, a, o, n=n: o + sig * xis[n][k : k + 1])
                    for n in site_names
                ]
                with torch.no_grad():
                    z = model(x[i : i + 1])[0]
                for hd in hds:
                    hd.remove()
                logits[i, s, k] = z
                out[i, s, int(z.argmax())] += 1
    return out, logits


def test_batched_equals_looped_with_same_seeds():
    m, x = mlp(), data(4)
    sig = [0.0, 0.3, 1.0, 3.0]
    ref, ref_logits = looped_reference(m, x, sig, 6, ["2", "4"])
    for chunk in (6, 13, 10_000):
        c, logits = Engine(m, x, samples=6, chunk_rows=chunk, prefix=False).counts(sig, keep_logits=True)
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        assert (c == ref).all()


def test_prefix_reuse_equals_full_recompute_and_chunks_do_not_matter():
    m, x = mlp(), data(9)
    sig = np.geomspace(0.05, 5, 7)
    eng = Engine(m, x, samples=8, sites=["4"])
    assert eng.split == 4  # children 0..3 (flatten, fc, relu, fc) run once per input
    a, la = eng.counts(sig, keep_logits=True)
    b, lb = Engine(m, x, samples=8, sites=["4"], prefix=False).counts(sig, keep_logits=True)
    c = Engine(m, x, samples=8, sites=["4"], chunk_rows=17).counts(sig)
    assert torch.allclose(la, lb, atol=1e-5)
    assert (a == b).all() and (a == c).all()


def test_crn_noise_is_per_sample_not_per_batch():
    m, x = mlp(), data(8)
    full = Engine(m, x, samples=8).counts([0.5, 2.0])
    part = Engine(m, x[3:6], samples=8, ids=[3, 4, 5]).counts([0.5, 2.0])
    assert (full[3:6] == part).all()
    other_seed = Engine(m, x, samples=8, seed=1).counts([0.5, 2.0])
    assert not (full == other_seed).all()


def test_crn_survival_is_monotone_on_linear_toy():
    # logits = h + sigma*xi with h = [m, 0, 0]: each pass keeps class 0 iff m/sigma > max_c(xi_c - xi_0)
    m = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [0.0], [0.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.eye(3))
        m[2].bias.zero_()
    x = torch.tensor([[0.5], [1.0], [2.0]])
    c = Engine(m, x, samples=64).counts(np.geomspace(0.05, 50, 25))
    assert (np.diff(c[:, :, 0], axis=1) <= 0).all()


def test_input_site_equals_hand_written_input_noise_loop():
    m, x = mlp(), data(3)
    K, sig = 5, 0.4
    counts, logits = Engine(m, x, sites=[":input"], samples=K).counts([sig], keep_logits=True)
    g = torch.Generator()
    for i in range(len(x)):
        g.manual_seed(mix_seed(0, i, 0, 0))
        xi = torch.randn((K, *x.shape[1:]), generator=g)
        with torch.no_grad():
            ref = m(x[i : i + 1] + sig * xi)
        assert torch.allclose(logits[i, 0], ref, atol=1e-6)


# ----------------------------------------------------------------------------- hand-computable escape
def exact_survival(mval, sigma, C=3):
    """P(m + s*xi0 > s*xi_c for all c) = E_z Phi(m/s + z)^(C-1)."""
    from scipy.stats import norm

    z = np.linspace(-8, 8, 4001)
    return float(np.trapezoid(norm.pdf(z) * norm.cdf(mval / sigma + z) ** (C - 1), z))


def test_escape_noise_matches_hand_computation():
    from scipy.optimize import brentq

    m = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [0.0], [0.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.eye(3))
        m[2].bias.zero_()
    x = torch.tensor([[0.5], [1.0], [2.0]])
    K = 4000
    sig = np.geomspace(0.1, 20, 40)
    res = apex(m, x, sig, samples=K)
    S = res.arrays["counts"][:, :, 0] / K
    exact = np.array([[exact_survival(float(v), s) for s in sig] for v in x[:, 0]])
    se = np.sqrt(exact * (1 - exact) / K) + 1e-9
    assert (np.abs(S - exact) < 4.5 * se + 1e-3).all()
    star = brentq(lambda s: exact_survival(1.0, s) - 0.5, 0.1, 50)  # escape noise scales with m
    est = res.arrays["escape_sigma"]
    assert np.allclose(est, star * x[:, 0].numpy(), rtol=0.06)
    assert (res.arrays["censor"] == 0).all()
    assert set(res.arrays["escape_class"].tolist()) <= {1, 2}
    bis = escape_bisect(m, x, np.geomspace(0.1, 20, 9), steps=6, samples=K)
    assert np.allclose(bis.sigma, star * x[:, 0].numpy(), rtol=0.06)


def test_large_noise_histogram_does_not_depend_on_input():
    m, x = mlp(width=32), data(40)
    big = apex(m, x, [200.0], samples=64).arrays["histogram"][0]
    zero = apex(m, torch.zeros_like(x), [200.0], samples=64).arrays["histogram"][0]
    assert 0.5 * np.abs(big - zero).sum() < 0.06  # CRN: same noise, inputs enter only at O(1/sigma)


# ----------------------------------------------------------------------------- outputs of any classifier
class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return (self.body(x), "aux")


class DictOut(dict):
    pass


class LogitsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return DictOut(logits=self.body(x))


def test_tuple_and_modeloutput_like_classifiers():
    x = data(3)
    base = Engine(mlp(), x, samples=4).counts([0.3])
    for model in (TupleModel(), LogitsModel()):
        assert (Engine(model, x, samples=4).counts([0.3]) == base).all()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("sigmas", [[-1.0, 1.0], [float("nan")], [], [1.0, 0.5], [1.0, 1.0], "abc"])
def test_bad_sigmas(sigmas):
    with pytest.raises(ConfigError):
        apex(mlp(), data(2), sigmas, samples=2)


@pytest.mark.parametrize("K", [0, -3, 1.5, "8", True])
def test_bad_K(K):
    with pytest.raises(ConfigError, match="samples"):
        Engine(mlp(), data(2), samples=K)


def test_bad_sites_models_inputs_kinds():
    with pytest.raises(SiteError, match="no module named 'fc9'"):
        Engine(mlp(), data(2), sites=["fc9"])
    with pytest.raises(SiteError, match="did you mean"):
        Engine(nn.Sequential(nn.ModuleDict({"relu1": nn.ReLU()})), data(2), sites=["0.relu2"])
    with pytest.raises(SiteError, match="no hidden nonlinearity"):
        Engine(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), data(2))
    with pytest.raises(ModelError, match="nn.Module"):
        Engine(lambda x: x, data(2))
    with pytest.raises(ConfigError, match="torch.Tensor"):
        Engine(mlp(), [[1.0]])
    with pytest.raises(ConfigError, match="noise kind"):
        Engine(mlp(), data(2), noise="pink")
    with pytest.raises(ConfigError, match="sigma < 1"):
        apex(mlp(), data(2), [0.5, 1.0], noise="dropout", samples=2)
    with pytest.raises(ModelError, match="failed on inputs"):
        Engine(mlp(), torch.rand(2, 7))

    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return {"hidden": self.act(x)}

    with pytest.raises(ModelError, match="no logits"):
        Engine(NoLogits(), torch.rand(2, 3))
    with pytest.raises(ModelError, match="classes"):
        Engine(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2), nn.Flatten(0)), torch.rand(2, 3))


# ----------------------------------------------------------------------------- hygiene
def test_model_untouched_after_success_and_after_induced_failure():
    m = cnn()
    m.train()
    m[0].weight.requires_grad_(False)
    user_calls = []
    m[2].register_forward_hook(lambda *a: user_calls.append(1))
    before = state(m)
    apex(m, torch.rand(3, 1, 6, 6), [0.1, 1.0], samples=4)
    assert same_state(before, state(m)) and m.training and user_calls

    class Boom(Exception):
        pass

    eng = Engine(m, torch.rand(3, 1, 6, 6), samples=4)

    def explode(*a):
        raise Boom

    eng.kind.apply = explode
    with pytest.raises(Boom):
        eng.counts([0.5])
    assert same_state(before, state(m)) and m.training
    # the same engine still works after the failure once the cause is gone
    del eng.kind.apply
    assert eng.counts([0.5]).sum() == 12


# ----------------------------------------------------------------------------- resumable sweeps
def test_interrupted_sweep_resumes_to_identical_result(tmp_path, monkeypatch):
    m, x = mlp(), data(5)
    sig = np.geomspace(0.05, 5, 9)
    ref = apex(m, x, sig, samples=6, out=tmp_path / "ref", sigma_chunk=2)
    calls = {"n": 0}
    real = sweep_mod._save_chunk

    def flaky(folder, i, *chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(folder, i, *chunk)

    monkeypatch.setattr(sweep_mod, "_save_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        apex(m, x, sig, samples=6, out=tmp_path / "run", sigma_chunk=2)
    monkeypatch.setattr(sweep_mod, "_save_chunk", real)
    again = apex(m, x, sig, samples=6, out=tmp_path / "run", sigma_chunk=2)
    assert again.data["resumed_chunks"] == 2
    for k in ("counts", "escape_sigma", "censor", "escape_class", "histogram", "D"):
        assert np.array_equal(ref.arrays[k], again.arrays[k]), k
    with pytest.raises(ConfigError, match="different settings"):
        apex(m, x, sig, samples=7, out=tmp_path / "run", sigma_chunk=2)


# ----------------------------------------------------------------------------- read-outs
def test_escape_readouts_on_hand_made_counts():
    K = 10
    sig = np.array([0.1, 0.2, 0.4, 0.8])
    # input 0: survival 1, 0.8, 0.2, 0 -> crossing between 0.2 and 0.4 at t = 0.3/0.6
    # input 1: never escapes; input 2: already escaped at 0.1; input 3: many weak rivals
    counts = np.zeros((4, 4, 3), int)
    counts[0, :, 0] = [10, 8, 2, 0]
    counts[0, :, 1] = [0, 2, 6, 7]
    counts[0, :, 2] = [0, 0, 2, 3]
    counts[1, :, 1] = K
    counts[2, :, 2] = [4, 3, 2, 1]
    counts[2, :, 0] = [6, 7, 8, 9]
    counts[3, :, 0] = [10, 4, 4, 1]
    counts[3, :, 1] = [0, 3, 3, 5]
    counts[3, :, 2] = [0, 3, 3, 4]
    y0 = np.array([0, 1, 2, 0])
    e = escape_noise(counts, sig, y0)
    assert np.isclose(e.sigma[0], np.exp(np.log(0.2) + 0.5 * np.log(2)))
    assert e.censor.tolist() == [0, 1, -1, 0] and e.sigma[1] == 0.8 and e.sigma[2] == 0.1
    assert e.escape_class.tolist()[:2] == [1, -1]
    assert e.escape_class[3] == 1  # tie at sigma* (3 vs 3) broken by the larger count at the next sigma
    maj = escape_noise(counts, sig, y0, rule="majority")
    assert maj.sigma[3] > e.sigma[3]  # weak rivals: majority flips later than survival
    D, floor = sample_dependence(np.tile(np.eye(3, dtype=int)[[0, 1, 2]][:, None] * 10, (1, 1, 1)))
    assert np.isclose(D[0], 1 - 3 * (1 / 3) ** 2) and floor[0] < D[0]


def test_early_exit_escape_equals_full_sweep():
    from innerprobe.perturb import escape_early_exit

    m, x = mlp(), data(12)
    sig = np.geomspace(0.02, 20, 17)
    full = apex(m, x, sig, samples=16)
    fast = escape_early_exit(m, x, sig, samples=16, sigma_chunk=3)
    assert np.array_equal(fast.sigma, full.arrays["escape_sigma"])
    assert np.array_equal(fast.censor, full.arrays["censor"])
    assert np.array_equal(fast.escape_class, full.arrays["escape_class"])


def test_noise_cache_gives_identical_counts():
    m, x = mlp(), data(6)
    sig = np.geomspace(0.05, 5, 5)
    plain = Engine(m, x, samples=8).counts(sig)
    cached = Engine(m, x, samples=8, noise_cache_mb=1)
    first = np.concatenate([cached.counts(sig[i : i + 1]) for i in range(5)], axis=1)
    assert (first == plain).all() and cached._store
    assert (cached.counts(sig) == plain).all()  # served from the store
