"""The residual-stream graph shared by every transformer family (Goldowsky-Dill et al. 2023, §2).

Nodes: input nodes (``embed``, and ``pos`` where positions are an additive embedding), one node
per attention head ``a{l}.{h}`` with slots ``q``, ``k``, ``v`` (plus ``pos`` for TransformerLens
shortformer, where the position embedding is added *after* ``ln1``), one node per MLP ``m{l}``
(slot ``in``) and ``out``. A slot's value is the sum of its senders' writes plus the constant
biases written upstream; the receiver's normalisation belongs to the slot (pre-norm models).
With ``parallel=True`` (GPT-NeoX, GPT-J, TransformerLens ``parallel_attn_mlp``) the MLP of
layer ``l`` reads what the heads of layer ``l`` read, not their writes.

**Head groups** (:func:`heads_group`): all heads of one layer are evaluated together by
``mix(q, k, v, heads=None, **extra)`` -> z ``[B, T, h, d_head]`` and ``head_out(z, heads=None)``
-> per-head writes ``[B, T, h, d_model]``. With ``heads=[...]`` only those heads are computed
(inputs then hold just them, in that order); families set ``subsets=True`` when their
``mix``/``head_out`` honour it. This is where head-subset recomputation lives (issue 12). A family
may also give its head function in :class:`Stages` (project / attend / weigh): the group is then a
:class:`HeadsGroup` whose ``reuse`` recomputes only what the changed q, k or v slots feed.

**Grouped-query attention.** Each query head ``h`` has its own ``k`` and ``v`` slots and its key
and value are computed from *its own* slots with the weights of its K/V head
``g = h // (n_heads // n_kv_heads)``. Unpatched, the copies of one K/V head are equal, so the
graph equals the model; patching ``u -> a{l}.{h}:k`` changes the keys seen by query head ``h``
only. To patch the shared key of K/V head ``g`` patch the ``k`` slots of all its query heads: the
site ``L{l}.k[heads=g]`` names exactly those slots (docs/patching.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..dag import Edge, Graph, Group, Node
from .base import head_site


@dataclass(frozen=True)
class Stages:
    """A head function in stages, the optional richer form of ``mix`` (issue 12; docs/patching.md,
    "Fast evaluator"): ``mix(q, k, v, heads) = weigh(attend(project(q, "q", heads), project(k, "k",
    heads)), project(v, "v", heads))``. ``project(x, which, heads)``: per-head slot values
    ``[..., T, h, d]`` -> queries, keys or values ``[..., T, h, d_head]`` (the slot's norm included);
    ``attend(q, k)`` -> pattern ``[..., h, Tq, Tk]``; ``weigh(pattern, v)`` -> z ``[..., T, h, d_head]``.
    Leading axes broadcast, so a change on k rows ``[k, B, ...]`` meets the clean ``[B, ...]``.

    With it, the fast evaluator recomputes only what a changed slot feeds: a changed query reuses
    the clean keys and values, a changed key the clean queries and values, a changed value the
    clean pattern (z = pattern @ v)."""

    project: Callable
    attend: Callable
    weigh: Callable


@dataclass
class HeadsGroup(Group):
    """A :class:`Group` of attention heads that may reuse clean intermediates (``Stages``).

    ``parts(slots)`` -> the clean intermediates of every head (computed lazily from the clean slot
    values ``{(node, slot): [B, T, d]}``); ``reuse(parts, slots, members, changed, k)`` -> the
    members' outputs ``[k * B, T, d_model]`` when only the slots named in ``changed`` differ from
    the clean run (``slots`` holds those, ``[k * B, T, d]``). Both are None without stages."""

    parts: Callable | None = None
    reuse: Callable | None = None


class CleanHeads:
    """Clean queries, keys, values ``[B, T, H, d_head]`` and pattern ``[B, H, T, T]`` of one layer,
    each computed on first use from the clean slot values."""

    def __init__(self, stages: Stages, slots: dict, nodes: Sequence[str]):
        self.stages, self.slots, self.nodes = stages, slots, list(nodes)
        self.memo: dict = {}

    def get(self, what: str) -> torch.Tensor:
        t = self.memo.get(what)
        if t is None:
            if what == "pattern":
                t = self.stages.attend(self.get("q"), self.get("k"))
            else:
                t = self.stages.project(torch.stack([self.slots[(n, what)] for n in self.nodes], 2), what, None)
            self.memo[what] = t
        return t

    def take(self, what: str, heads: list) -> torch.Tensor:
        """The clean ``what`` of ``heads`` (a view when they are consecutive)."""
        t, axis = self.get(what), 1 if what == "pattern" else 2
        if heads == list(range(heads[0], heads[0] + len(heads))):
            return t.narrow(axis, heads[0], len(heads))
        return t.index_select(axis, torch.tensor(heads, device=t.device))


def heads_group(
    name: str,
    layer: int,
    H: int,
    mix: Callable,
    head_out: Callable,
    *,
    subsets: bool = False,
    extra: Sequence[str] = (),
    head_sum: Callable | None = None,
    stages: Stages | None = None,
) -> Group:
    """Group fn for one attention layer: per-head slot values ``[B, T, d]`` -> per-head writes.

    When every q/k/v slot holds the *same tensor* (a residual stream nobody patched at this
    layer), ``mix`` gets one stride-0 view ``[B, T, h, d]`` of it for q, k and v (no copies), so a
    family may normalise once (TransformerLens does). ``Group.total`` returns the sum of the
    heads' writes (``head_sum(z)`` if given, else the per-head writes summed), which is all the
    fast evaluator (patch.fast) needs downstream of a patched edge. With ``stages`` (and head
    subsets, no extra slots) the group can reuse clean intermediates (:class:`HeadsGroup`)."""
    nodes = tuple(f"a{layer}.{h}" for h in range(H))

    def z_of(slots, sub, heads):
        first = slots[(sub[0], "q")]
        if all(slots[(n, s)] is first for n in sub for s in "qkv"):
            q = k = v = first.unsqueeze(2).expand(*first.shape[:2], len(sub), first.shape[-1])
        else:
            q, k, v = (
                slots[(sub[0], s)].unsqueeze(2) if len(sub) == 1 else torch.stack([slots[(n, s)] for n in sub], 2)
                for s in "qkv"
            )
        more = {s: slots[(sub[0], s)] for s in extra}  # extra slots (shortformer pos) are equal for every head
        return mix(q, k, v, **more) if heads is None else mix(q, k, v, heads=heads, **more)

    def fn(slots, members=None):
        sub = list(nodes) if members is None else list(members)
        heads = None if members is None else [nodes.index(n) for n in sub]
        z = z_of(slots, sub, heads)
        out = head_out(z) if heads is None else head_out(z, heads=heads)
        return [out[:, :, i] for i in range(len(sub))]

    def total(slots):
        z = z_of(slots, list(nodes), None)
        return head_sum(z) if head_sum is not None else head_out(z).sum(2)

    if stages is None or extra or not subsets:
        return HeadsGroup(name, "component", nodes, fn, subsets, total)

    def parts(slots):
        return CleanHeads(stages, slots, nodes)

    def reuse(clean: CleanHeads, slots, members, changed, k):
        sub = list(members)
        heads = [nodes.index(n) for n in sub]

        def new(s):  # the changed slot s of the members as [k, B, T, h, d]
            x = slots[(sub[0], s)].unsqueeze(2) if len(sub) == 1 else torch.stack([slots[(n, s)] for n in sub], 2)
            return stages.project(x.reshape(k, -1, *x.shape[1:]), s, heads)

        q, kk, v = (new(s) if s in changed else clean.take(s, heads) for s in "qkv")
        pattern = stages.attend(q, kk) if "q" in changed or "k" in changed else clean.take("pattern", heads)
        z = stages.weigh(pattern, v)
        z = z.expand(k, *z.shape[-4:]).reshape(-1, *z.shape[-3:])
        out = head_out(z, heads=heads)
        return [out[:, :, i] for i in range(len(sub))]

    return HeadsGroup(name, "component", nodes, fn, subsets, total, parts, reuse)


def normed(norm: Callable, fn: Callable) -> Callable:
    """``r -> fn(norm(r))``: a pre-norm MLP as a slot function (the norm belongs to the slot)."""
    return lambda r: fn(norm(r))


def mlp_group(layer: int, fn: Callable) -> Group:
    m = f"m{layer}"
    return Group(f"mlp{layer}", "component", (m,), lambda slots: [fn(slots[(m, "in")])])


def residual_graph(
    name: str,
    *,
    n_layers: int,
    H: int,
    inputs: Sequence[tuple[str, str]],
    input_fn: Callable,
    mix: Sequence[Callable],
    head_out: Sequence[Callable],
    mlp_fn: Sequence[Callable | None],
    out_fn: Callable,
    b_O: Sequence,
    model,
    n_kv: int | None = None,
    parallel: bool = False,
    qk_inputs: Sequence[str] = (),
    pos_slot: str | None = None,
    subsets: bool = False,
    notes: Sequence[str] = (),
    head_sum: Sequence[Callable] | None = None,
    stages: Sequence[Stages | None] | None = None,
) -> Graph:
    """Build the residual graph. ``inputs`` = [(node, site)] computed by ``input_fn(x)`` (a list);
    ``qk_inputs`` feed only q/k slots (zoo shortformer); ``pos_slot`` names an input node that
    feeds an extra ``pos`` slot of every head (TransformerLens shortformer); ``b_O[l]`` is layer
    l's constant write (attention output bias, plus the MLP's where it is not part of ``mlp_fn``);
    ``stages[l]`` (optional) is layer l's head function in :class:`Stages`, for reuse of clean parts."""
    n_kv = n_kv or H
    rep = H // n_kv
    nodes = {n: Node(n, "input", site=site) for n, site in inputs}
    groups = [Group("inputs", "input", tuple(n for n, _ in inputs), input_fn)]
    edges: list[Edge] = []
    const: dict = {}
    writers = [n for n, _ in inputs if n not in qk_inputs and n != pos_slot]
    bias = None
    for l in range(n_layers):
        read_by_mlp, bias_for_mlp = list(writers), bias
        head_slots = ("q", "k", "v") + (("pos",) if pos_slot else ())
        for h in range(H):
            n = f"a{l}.{h}"
            sites = (
                ("q", head_site(l, "q", h)),
                ("k", head_site(l, "k", h // rep)),
                ("v", head_site(l, "v", h // rep)),
            )
            nodes[n] = Node(n, "component", head_slots, l, h, site=head_site(l, "z", h), slot_sites=sites)
            for s in "qkv":
                edges += [Edge(u, n, s) for u in writers + [i for i in qk_inputs if s in "qk"]]
                if bias is not None:
                    const[(n, s)] = bias
            if pos_slot:
                edges.append(Edge(pos_slot, n, "pos"))
        groups.append(
            heads_group(
                f"attn{l}",
                l,
                H,
                mix[l],
                head_out[l],
                subsets=subsets,
                extra=("pos",) if pos_slot else (),
                head_sum=None if head_sum is None else head_sum[l],
                stages=None if stages is None else stages[l],
            )
        )
        heads = [f"a{l}.{h}" for h in range(H)]
        writers = writers + heads
        bias = b_O[l] if bias is None else bias + b_O[l]
        if mlp_fn[l] is not None:
            m = f"m{l}"
            nodes[m] = Node(m, "component", ("in",), l, site=f"L{l}.mlp_out", slot_sites=(("in", f"L{l}.mlp_in"),))
            srcs = read_by_mlp if parallel else writers
            edges += [Edge(u, m) for u in srcs]
            c = bias_for_mlp if parallel else bias
            if c is not None:
                const[(m, "in")] = c
            groups.append(mlp_group(l, mlp_fn[l]))
            writers = writers + [m]
    nodes["out"] = Node("out", "output", ("in",), site="logits")
    edges += [Edge(u, "out") for u in writers]
    if bias is not None:
        const[("out", "in")] = bias
    groups.append(Group("output", "output", ("out",), lambda slots: [out_fn(slots[("out", "in")])]))
    graph = Graph(name, nodes, groups, edges, const, model, list(notes))
    if rep > 1:
        graph.notes.append(
            f"grouped-query attention: {H} query heads share {n_kv} K/V heads; each query head has its own "
            f"k/v slots (L{{l}}.k[heads=g] names the k slots of query heads {rep}g..{rep}g+{rep - 1})"
        )
    return graph


def causal_mask(T: int, device, window: int | None = None) -> torch.Tensor:
    """Boolean [T, T], True where query i may NOT attend to key j (j > i, or i - j >= window)."""
    i = torch.arange(T, device=device)
    banned = i[None, :] > i[:, None]
    if window is not None:
        banned = banned | (i[:, None] - i[None, :] >= window)
    return banned
