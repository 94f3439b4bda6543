"""The IOI Llama (zoo.ioi_model) and the head machinery of the path-ioi study (studies.ioi_heads)."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from innerprobe import zoo  # noqa: E402
from innerprobe.studies import ioi_heads as IH  # noqa: E402
from innerprobe.zoo import ioi  # noqa: E402
from innerprobe.zoo import ioi_model as M  # noqa: E402

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "d_mlp": 64}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return M.build_llama(M.model_config(TINY))


def _runs(model, b, c):
    r = IH.IOIRuns.__new__(IH.IOIRuns)  # bypass the "has the model learned IOI" check: a random model
    r.model, r.x_r, r.x_c, r.shape = model, b, c, IH.shape_of(model)
    r.clean = IH.forward(model, b.tokens, capture_z=True, attentions=True, capture_final=True)
    r.cf = IH.forward(model, c.tokens, capture_z=True)
    r.ld_clean, r.ld_cf = r.ld(r.clean["logits"]), r.ld(r.cf["logits"])
    r.z_mean = {layer: IH.template_mean(z, c) for layer, z in r.cf["z"].items()}
    r.scale = 1.0
    return r


def test_head_slices_rebuild_o_proj_and_dla_sums_to_the_attention_output(tiny):
    b = ioi.sample(8, 1, "test")
    r = _runs(tiny, b, b.abc(2))
    sh = r.shape
    for layer in range(sh.n_layers):
        z = r.clean["z"][layer]  # [N, T, H, dh]
        W_O = tiny.model.layers[layer].self_attn.o_proj.weight.view(-1, sh.n_heads, sh.d_head)
        per_head = torch.einsum("nthe,dhe->nthd", z, W_O).sum(2)
        assert torch.allclose(per_head, tiny.model.layers[layer].self_attn.o_proj(z.flatten(2)), atol=1e-5)
    dla = IH.direct_logit_attribution(r)
    assert dla.shape == (sh.n_layers, sh.n_heads) and torch.isfinite(torch.tensor(dla)).all()


def test_identical_counterfactual_means_no_effect_anywhere(tiny):
    b = ioi.sample(6, 3, "test")
    r = _runs(tiny, b, b)
    assert torch.allclose(IH.circuit_ld(r, {}, ablation="resample"), r.ld_clean, atol=1e-5)
    assert abs(IH.path_patch(r, [(0, 1)], [(1, 2)], "q", "end")) < 1e-5


def test_template_mean_is_the_mean_over_prompts_of_the_same_template():
    b = ioi.sample(30, 0, "test")
    z = torch.randn(30, b.tokens.shape[1], 3)
    m = IH.template_mean(z, b)
    for i in range(30):
        assert torch.allclose(m[i], z[b.template == b.template[i]].mean(0), atol=1e-6)


def test_keeping_every_head_reproduces_the_clean_run(tiny):
    b = ioi.sample(6, 4, "test")
    r = _runs(tiny, b, b.abc(1))
    every = [(layer, h) for layer in range(2) for h in range(4)]
    assert torch.allclose(IH.circuit_ld(r, {None: every}), r.ld_clean, atol=1e-5)
    assert not torch.allclose(IH.circuit_ld(r, {}), r.ld_clean, atol=1e-3)


def test_last_layer_path_to_logits_equals_node_patching_at_all_positions(tiny):
    # a last-layer head reaches the logits only directly (and through its layer's MLP): freezing the other
    # heads changes nothing, so path patching it to the logits is node patching it everywhere
    b = ioi.sample(6, 5, "test")
    r = _runs(tiny, b, b.abc(3))
    nodes = IH.node_patching(r, positions=(None,))["all"]
    for h in range(4):
        assert IH.path_patch(r, [(1, h)]) == pytest.approx(nodes[1, h], abs=1e-5)


def test_node_patching_after_a_position_leaves_earlier_logits_alone(tiny):
    b = ioi.sample(6, 6, "test")
    c = b.abc(4)
    r = _runs(tiny, b, c)
    out = IH.forward(tiny, b.tokens, z_edit=IH.replace_heads(r.cf["z"], r.head_mask([(0, 0), (1, 3)], "end")))["logits"]
    e = b.positions["end"]
    T = b.tokens.shape[1]
    before = torch.arange(T)[None] < e[:, None]
    assert torch.allclose(out[before], r.clean["logits"][before], atol=1e-6)


def test_gqa_key_receivers_are_whole_groups(tiny):
    b = ioi.sample(4, 7, "test")
    r = _runs(tiny, b, b)
    assert IH.receiver_slices(r, [(1, 1)], "k") == {1: list(range(0, 8))}  # heads 0-1 share K/V head 0
    assert IH.receiver_slices(r, [(1, 3)], "q") == {1: list(range(24, 32))}


def test_a_model_that_is_not_llama_is_refused_by_name():
    from innerprobe.errors import ModelError

    with pytest.raises(ModelError, match="LlamaForCausalLM"):
        IH.shape_of(torch.nn.Linear(2, 2))


def test_card_records_floors_cpu_time_and_reloads_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    over = {**TINY, "steps": 20, "eval_size": 16, "log_every": 10}
    model, card = zoo.load("ioi-llama", seed=0, progress=False, **over)
    assert card["recipe"] == "ioi-llama" and card["train_cpu_seconds"] > 0 and card["train_threads"] == 1
    assert {f["metric"] for f in card["floors"]} == {"test_logit_diff_positive", "test_io_top1"}
    assert all(f["threshold"] in (0.9, 0.8) for f in card["floors"])
    assert card["config"]["llama"]["num_key_value_heads"] == 2 and card["data"]["floors_split"].startswith("test")
    assert (
        json.loads((zoo.card_path("ioi-llama", 0, **over) / "card.json").read_text())["fingerprint"]
        == card["fingerprint"]
    )
    again, card2 = zoo.load("ioi-llama", seed=0, train_if_missing=False, **over)
    x = ioi.sample(4, 0, "test").tokens
    with torch.no_grad():
        assert torch.equal(M.logits_of(model, x), M.logits_of(again, x))
    assert type(again).__name__ == "LlamaForCausalLM" and card2["weights_sha256"] == card["weights_sha256"]


def test_study_pieces_on_a_random_tiny_model(tiny, tmp_path):
    from innerprobe.report.sections import Section
    from innerprobe.results import Result
    from innerprobe.studies import path_ioi as P

    b = ioi.sample(8, 0, "test")
    r = _runs(tiny, b, b.abc(1))
    p = P.analyse_runs(r, 0, n_boot=30, acdc_n=4, ig_steps=2, quick=True)
    keys = [t["key"] for t in p["table"]]
    assert keys[:3] == ["all", "none", "circuit"] and "circuit_resample" in keys
    by = {t["key"]: t["proportion"].estimate for t in p["table"]}
    assert by["all"] == pytest.approx(1.0) and by["none"] == pytest.approx(0.0)
    for c, heads in p["classes"].items():  # a head gets a class only if its attention score beats chance by the margin
        score = P.CLASSES[c][1]
        assert all(p["att"]["scores"][score][h] >= p["att"]["chance"][score] + P.ATT_MARGIN for h in heads)
    assert p["discovery"]["available"] and "eap_ig_topk" in p["discovery"]["methods"]
    P.circuit_figure(p, tmp_path / "circuit.png", r.shape)
    summary = P._summary([p])
    P._bars(summary, tmp_path / "hypotheses.png", 1)
    card = {
        "seed": 0,
        "config": M.model_config(TINY),
        "metrics": {"test_logit_diff_positive": 0.5, "test_io_top1": 0.1},
    }
    P._section(tmp_path, [p], summary, [card], n=8, n_boot=30, quick=True)
    sec = Section.load(tmp_path / "section.json")
    assert sec.tables and (tmp_path / "circuit.png").stat().st_size > 0
    rows = P._rows(summary, [p], [0])
    assert all(r_["lo"] is None or r_["lo"] <= r_["hi"] for r_ in rows)
    Result(kind="study:path-ioi", rows=rows).save(tmp_path / "summary.json")


@pytest.mark.slow
def test_path_ioi_quick_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path / "cache"))
    from innerprobe.studies import path_ioi as P

    res = P.run(tmp_path / "out", seeds=3, quick=True)
    rows = {r["condition"].get("hypothesis"): r for r in res.rows if r["metric"] == "proportion_ld_explained"}
    assert rows["all"]["value"] == pytest.approx(1.0) and rows["none"]["value"] == pytest.approx(0.0)
    assert res.data["seeds"] == 1 and (tmp_path / "out" / "section.json").exists()
    card = json.loads((zoo.card_path("ioi-llama", 0) / "card.json").read_text())
    assert card["all_floors_met"]
