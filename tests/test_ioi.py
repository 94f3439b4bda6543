"""IOI data (innerprobe.zoo.ioi): reproducibility, position indices, splits, counterfactuals."""

import pytest
import torch

from innerprobe.errors import ConfigError
from innerprobe.zoo import ioi


def test_same_seed_same_prompts_other_seed_other_prompts():
    a, b, c = ioi.sample(64, 3, "train"), ioi.sample(64, 3, "train"), ioi.sample(64, 4, "train")
    assert torch.equal(a.tokens, b.tokens) and all(torch.equal(a.positions[k], b.positions[k]) for k in a.positions)
    assert not torch.equal(a.tokens, c.tokens)
    assert torch.equal(a.abc(7).tokens, b.abc(7).tokens)


@pytest.mark.parametrize("split", ioi.SPLITS)
def test_positions_point_at_the_names(split):
    b = ioi.sample(200, 0, split)
    r = torch.arange(len(b))
    p = b.positions
    assert torch.equal(b.tokens[r, p["io"]], b.io) and torch.equal(b.tokens[r, p["s1"]], b.s)
    assert torch.equal(b.tokens[r, p["s2"]], b.s) and bool((b.io != b.s).all())
    assert torch.equal(p["s1p1"], p["s1"] + 1)
    assert bool((p["s2"] > torch.maximum(p["io"], p["s1"])).all()) and bool((p["end"] > p["s2"]).all())
    # END is the last real token: "to"; everything after it is padding
    assert bool((b.tokens[r, p["end"]] == ioi.TOKEN_ID["to"]).all())
    T = b.tokens.shape[1]
    after = torch.arange(T)[None] > p["end"][:, None]
    assert bool((b.tokens[after] == ioi.PAD_ID).all()) and bool((b.tokens[~after] != ioi.PAD_ID).all())
    # ABBA: IO first; BABA: S first; both present, in about equal numbers
    assert bool(((p["io"] < p["s1"]) == (b.order == 0)).all())
    assert abs(int(b.order.sum()) - 100) <= 1
    names = set(ioi.split_names(split))
    assert {ioi.VOCAB[i] for i in b.io.tolist() + b.s.tolist()} <= names
    # the two names are the only name tokens in the prompt
    is_name = torch.isin(b.tokens, ioi.NAME_IDS)
    assert bool((is_name.sum(1) == 3).all())


def test_splits_hold_out_names_and_templates():
    sets = {s: set(ioi.split_names(s)) for s in ioi.SPLITS}
    assert not (sets["train"] & sets["dev"]) and not (sets["train"] & sets["test"]) and not (sets["dev"] & sets["test"])
    temps = {s: set(ioi.TEMPLATES[s]) for s in ioi.SPLITS}
    assert (
        not (temps["train"] & temps["test"])
        and not (temps["train"] & temps["dev"])
        and not (temps["dev"] & temps["test"])
    )
    b = ioi.sample(300, 0, "test")
    assert set(b.template.tolist()) == {0, 1, 2}


def test_every_held_out_template_word_is_seen_in_training_text():
    seen = {w for t in ioi.TEMPLATES["train"] + ioi.BACKGROUND for w in t.split()}
    for split in ("dev", "test"):
        for t in ioi.TEMPLATES[split]:
            assert set(t.split()) <= seen, t


def test_background_uses_every_name_and_no_ioi_structure():
    bg = ioi.background(600, torch.Generator().manual_seed(0))
    seen = set(bg[torch.isin(bg, ioi.NAME_IDS)].tolist())
    assert seen == set(ioi.NAME_IDS.tolist())  # held-out names included
    assert bool((bg[:, 0] == ioi.BOS_ID).all())


def test_abc_keeps_template_and_positions_and_replaces_all_three_names():
    b = ioi.sample(100, 1, "test")
    c = b.abc(5)
    assert all(torch.equal(b.positions[k], c.positions[k]) for k in b.positions)
    r = torch.arange(len(b))
    p = b.positions
    name_pos = torch.zeros_like(b.tokens, dtype=torch.bool)
    for k in ("io", "s1", "s2"):
        name_pos[r, p[k]] = True
    assert torch.equal(b.tokens[~name_pos], c.tokens[~name_pos])
    three = torch.stack([c.tokens[r, p[k]] for k in ("io", "s1", "s2")], 1)
    assert all(len(set(t.tolist())) == 3 for t in three)
    assert not bool(((three == b.io[:, None]) | (three == b.s[:, None])).any())
    assert {ioi.VOCAB[i] for i in three.flatten().tolist()} <= set(ioi.split_names("test"))


def test_swap_exchanges_io_and_s():
    b = ioi.sample(50, 2, "dev")
    s = b.swap()
    assert torch.equal(s.io, b.s) and torch.equal(s.s, b.io)
    r = torch.arange(len(b))
    assert torch.equal(s.tokens[r, b.positions["s2"]], b.io) and torch.equal(s.tokens[r, b.positions["io"]], b.s)
    logits = torch.randn(len(b), b.tokens.shape[1], len(ioi.VOCAB))
    assert torch.allclose(ioi.logit_diff(logits, s), -ioi.logit_diff(logits, b))


def test_unpacks_as_tokens_positions_answers():
    tokens, positions, (io, s) = ioi.sample(4, 0)
    assert tokens.shape[0] == 4 and set(positions) == {"io", "s1", "s2", "end", "s1p1"} and io.shape == s.shape == (4,)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ConfigError, match="split"):
        ioi.sample(4, 0, "validation")
    with pytest.raises(ConfigError, match="positive"):
        ioi.sample(0, 0)
    with pytest.raises(ConfigError, match="templates"):
        ioi.sample(4, 0, "test", templates=[7])
    with pytest.raises(ConfigError, match="vocabulary"):
        ioi.encode("When Zaphod and Mary went")
