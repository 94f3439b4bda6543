"""Computational graphs for path patching (Goldowsky-Dill et al. 2023, arXiv 2304.05969, §2).

A :class:`Graph` is a DAG whose *nodes are functions and edges carry values*:

* input nodes (``embed``, ``pos``, or an fx placeholder) compute a value from the model input;
* component nodes (attention heads ``a{l}.{h}``, MLPs ``m{l}``, fx modules) read one value per
  *slot* (a head has separate ``q``, ``k`` and ``v`` slots; everything else one slot ``in``);
* one output node ``out`` whose value is the model output.

Each slot's value is the constant part of that slot (biases such as W_O's, shared by every run)
plus the sum of the values of the nodes with an edge into it. Nodes are evaluated in *groups*
(all heads of one layer at once); a group function takes each member's slot values and returns
each member's output. Evaluating the graph with nothing patched reproduces the model's output
(tested against the model's own forward).

Builders: :func:`build_graph` picks one of :func:`transformer_graph` (the zoo transformer),
:func:`tl_graph` (TransformerLens ``HookedTransformer`` with ``use_split_qkv_input``),
:func:`hf_gpt2_graph` (Hugging Face GPT-2 family) and :func:`fx_graph` (any model torch.fx traces,
at module granularity: residual blocks vs their skips become separate paths). LayerNorm belongs to
the receiving slot (pre-LN only; §1.1 of the method notes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelError, did_you_mean


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "input" | "component" | "output"
    slots: tuple[str, ...] = ()
    layer: int | None = None
    head: int | None = None


@dataclass(frozen=True, order=True)
class Edge:
    """``src -> dst:slot``: the receiver ``dst`` reads ``src`` in its slot ``slot``."""

    src: str
    dst: str
    slot: str = "in"

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}" + ("" if self.slot == "in" else f":{self.slot}")


@dataclass
class Group:
    """Nodes evaluated together. ``fn(x)`` for inputs returns one value per node; for components
    and the output ``fn(slots)`` takes {(node, slot): value} and returns one value per node."""

    name: str
    kind: str
    nodes: tuple[str, ...]
    fn: Callable
    subsets: bool = False  # fn(slots, nodes=[...]) computes just those members


Path = tuple  # tuple[Edge, ...] from an input node to "out"


@dataclass
class Graph:
    name: str
    nodes: dict[str, Node]
    groups: list[Group]
    edges: list[Edge]
    const: dict = field(default_factory=dict)  # (node, slot) -> tensor added to the slot
    model: nn.Module | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.edge_index = {e: i for i, e in enumerate(self.edges)}
        self.incoming: dict[tuple[str, str], list[int]] = {}
        for n in self.nodes.values():
            for s in n.slots:
                self.incoming[(n.name, s)] = []
        self.outgoing: dict[str, list[int]] = {n: [] for n in self.nodes}
        for i, e in enumerate(self.edges):
            if (e.dst, e.slot) not in self.incoming:
                raise ModelError(f"graph {self.name}: edge {e} goes into an unknown slot")
            self.incoming[(e.dst, e.slot)].append(i)
            self.outgoing[e.src].append(i)
        self.group_of = {n: g for g in self.groups for n in g.nodes}
        self.order = [n for g in self.groups for n in g.nodes]
        self._paths = None

    # ------------------------------------------------------------------ lookup
    @property
    def inputs(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.kind == "input"]

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise ConfigError(f"graph {self.name} has no node {name!r}", hint=did_you_mean(name, self.nodes))
        return self.nodes[name]

    def edge(self, spec: "str | Edge") -> Edge:
        """``graph.edge("a0.1->a1.2:k")`` (slot defaults to ``in``)."""
        if isinstance(spec, Edge):
            e = spec
        else:
            if "->" not in spec:
                raise ConfigError(f"edge {spec!r} needs the form SRC->DST[:SLOT]", hint="e.g. 'a0.1->a1.2:k' or 'a1.2->out'")
            src, dst = (s.strip() for s in spec.split("->", 1))
            dst, _, slot = dst.partition(":")
            e = Edge(src, dst, slot or "in")
        if e not in self.edge_index:
            self.node(e.src)
            d = self.node(e.dst)
            if e.slot not in d.slots:
                raise ConfigError(f"node {e.dst} has no slot {e.slot!r}", hint=f"its slots: {', '.join(d.slots)}")
            raise ConfigError(f"{e} is not an edge of graph {self.name}", hint=did_you_mean(str(e), [str(x) for x in self.edges]))
        return e

    def paths(self, limit: int = 200_000) -> list[Path]:
        """Every input -> output path, as tuples of edges (enumerated once, cached)."""
        if self._paths is None:
            memo: dict[str, list] = {}

            def from_node(n: str) -> list:
                if n == "out":
                    return [()]
                if n not in memo:
                    res = []
                    for i in self.outgoing[n]:
                        e = self.edges[i]
                        for rest in from_node(e.dst):
                            res.append((e,) + rest)
                            if len(res) > limit:
                                raise ConfigError(f"graph {self.name} has more than {limit} paths", hint="use edge-set hypotheses (they never enumerate paths)")
                    memo[n] = res
                return memo[n]

            self._paths = [p for i in self.inputs for p in from_node(i)]
        return self._paths

    # ------------------------------------------------------------------ evaluation
    def run_inputs(self, x) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            if g.kind == "input":
                out.update(zip(g.nodes, g.fn(x)))
        return out

    def slot_value(self, node: str, slot: str, contributions: Sequence[torch.Tensor]) -> torch.Tensor:
        c = self.const.get((node, slot))
        total = None
        for v in contributions:
            total = v if total is None else total + v
        if total is None:
            raise ModelError(f"slot {node}:{slot} has no incoming edges")
        return total if c is None else total + c

    def run_group(self, g: Group, slots: dict, nodes: list | None = None) -> list[torch.Tensor]:
        """Outputs of the group's members (of ``nodes`` only, when the group supports subsets)."""
        if nodes is None or list(nodes) == list(g.nodes):
            return list(g.fn(slots))
        if g.subsets:
            return list(g.fn(slots, nodes))
        outs = g.fn(slots)
        return [outs[g.nodes.index(n)] for n in nodes]

    def forward(self, x, *, inputs: dict | None = None, return_acts: bool = False, slots_out: dict | None = None):
        """Plain evaluation (nothing patched). ``inputs`` overrides input-node values;
        ``slots_out`` (a dict) receives every slot's value."""
        acts = dict(self.run_inputs(x) if inputs is None else inputs)
        for g in self.groups:
            if g.kind == "input":
                continue
            slots = {(n, s): self.slot_value(n, s, [acts[self.edges[i].src] for i in self.incoming[(n, s)]])
                     for n in g.nodes for s in self.nodes[n].slots}
            if slots_out is not None:
                slots_out.update(slots)
            acts.update(zip(g.nodes, self.run_group(g, slots)))
        return (acts["out"], acts) if return_acts else acts["out"]

    def node_forward(self, name: str, slot_values: dict[str, torch.Tensor]) -> torch.Tensor:
        """One node's output from its own slot values (other members of its group get the same
        values and are discarded; members of a group are independent given their inputs)."""
        g = self.group_of[name]
        slots = {(n, s): slot_values[s] for n in g.nodes for s in self.nodes[n].slots}
        return self.run_group(g, slots)[g.nodes.index(name)]

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        kinds = {}
        for n in self.nodes.values():
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        lines = [f"Graph {self.name}: {len(self.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in kinds.items())}), {len(self.edges)} edges"]
        for g in self.groups:
            lines.append(f"  {g.name:<10} {' '.join(g.nodes)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ====================================================================== transformers
def _heads_group(name, layer, H, mix: Callable, head_out: Callable, subsets: bool = False):
    """Group fn for one attention layer: slot values [B, T, d] per head -> per-head writes.
    With ``subsets``, ``mix`` and ``head_out`` take ``heads=[...]`` and compute only those."""
    nodes = tuple(f"a{layer}.{h}" for h in range(H))

    def fn(slots, nodes_=None):
        sub = list(nodes) if nodes_ is None else list(nodes_)
        q = torch.stack([slots[(n, "q")] for n in sub], 2)
        k = torch.stack([slots[(n, "k")] for n in sub], 2)
        v = torch.stack([slots[(n, "v")] for n in sub], 2)
        if nodes_ is None:
            out = head_out(mix(q, k, v))  # [B, T, H, d]
        else:
            heads = [nodes.index(n) for n in sub]
            out = head_out(mix(q, k, v, heads=heads), heads=heads)
        return [out[:, :, i] for i in range(len(sub))]

    return Group(name, "component", nodes, fn, subsets)


def _residual_graph(name, *, n_layers, H, has_mlp, embed_fn, pos_fn, mix, head_out, mlp_fn, out_fn,
                    b_O: list, shortformer: bool, model, notes=(), subsets: bool = False) -> Graph:
    nodes: dict[str, Node] = {"embed": Node("embed", "input"), "pos": Node("pos", "input")}
    groups = [Group("inputs", "input", ("embed", "pos"), lambda x: [embed_fn(x), pos_fn(x)])]
    edges: list[Edge] = []
    const: dict = {}
    writers = ["embed"] if shortformer else ["embed", "pos"]
    bias = None
    for l in range(n_layers):
        heads = [f"a{l}.{h}" for h in range(H)]
        for h, n in enumerate(heads):
            nodes[n] = Node(n, "component", ("q", "k", "v"), l, h)
            for s in "qkv":
                srcs = writers + (["pos"] if shortformer and s in "qk" else [])
                edges += [Edge(u, n, s) for u in srcs]
                if bias is not None:
                    const[(n, s)] = bias
        groups.append(_heads_group(f"attn{l}", l, H, mix[l], head_out[l], subsets))
        writers = writers + heads
        bias = b_O[l] if bias is None else bias + b_O[l]
        if has_mlp:
            m = f"m{l}"
            nodes[m] = Node(m, "component", ("in",), l)
            edges += [Edge(u, m) for u in writers]
            const[(m, "in")] = bias
            groups.append(Group(f"mlp{l}", "component", (m,), (lambda f, m: lambda slots: [f(slots[(m, "in")])])(mlp_fn[l], m)))
            writers = writers + [m]
    nodes["out"] = Node("out", "output", ("in",))
    edges += [Edge(u, "out") for u in writers]
    if bias is not None:
        const[("out", "in")] = bias
    groups.append(Group("output", "output", ("out",), lambda slots: [out_fn(slots[("out", "in")])]))
    return Graph(name, nodes, groups, edges, const, model, list(notes))


def transformer_graph(model: nn.Module) -> Graph:
    """Graph of the zoo's :class:`~innerprobe.zoo.transformer.AttnTransformer` (duck-typed)."""
    cfg = model.cfg
    blocks = list(model.blocks)
    B_O = [b.attn.o_proj.bias.detach() if b.attn.o_proj.bias is not None else torch.zeros(cfg["d_model"]) for b in blocks]
    return _residual_graph(
        f"{type(model).__name__}({cfg['n_layers']}L x {cfg['n_heads']}H" + (", LN" if cfg["ln"] else "") + (", MLP" if cfg["d_mlp"] else "") + ")",
        n_layers=cfg["n_layers"], H=cfg["n_heads"], has_mlp=bool(cfg["d_mlp"]),
        embed_fn=lambda x: model.embed(x), pos_fn=lambda x: model.pos_embed(x),
        mix=[(lambda a: lambda q, k, v, heads=None: a.mix(q, k, v, hooks=False, heads=heads))(b.attn) for b in blocks],
        head_out=[b.attn.head_outputs for b in blocks], subsets=True,
        mlp_fn=[b.mlp_fn if b.has_mlp else None for b in blocks],
        out_fn=lambda r: model.unembed(model.ln_final(r)),
        b_O=B_O, shortformer=cfg["pos"] == "shortformer", model=model,
        notes=["pos -> q/k slots only (shortformer)"] if cfg["pos"] == "shortformer" else [])


def tl_graph(model: nn.Module) -> Graph:
    """Graph of a TransformerLens ``HookedTransformer`` (needs ``use_split_qkv_input=True``)."""
    cfg = model.cfg
    if not getattr(cfg, "use_split_qkv_input", False):
        raise ModelError("TransformerLens model needs use_split_qkv_input=True for Q/K/V slots",
                         hint="build it with HookedTransformerConfig(..., use_split_qkv_input=True) or call model.set_use_split_qkv_input(True)")
    if cfg.normalization_type not in (None, "LN", "LNPre", "RMS", "RMSPre") or getattr(cfg, "positional_embedding_type", "standard") not in ("standard", "shortformer"):
        raise ModelError(f"unsupported TransformerLens config for graphs: normalization {cfg.normalization_type}, positions {cfg.positional_embedding_type}")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        raise ModelError("grouped-query attention is not supported by the TransformerLens graph builder yet")
    blocks = list(model.blocks)

    def mix_fn(b):
        def mix(q, k, v):
            from .hooks import HookSession

            with HookSession(model) as hs:
                z_holder = {}

                def grab(mod, args, out):
                    z_holder["z"] = out
                hs.forward_hook(b.attn.hook_z, grab)
                b.attn(b.ln1(q), b.ln1(k), b.ln1(v))
            return z_holder["z"]
        return mix

    def head_out_fn(b):
        return lambda z: torch.einsum("bthe,hed->bthd", z, b.attn.W_O)

    short = cfg.positional_embedding_type == "shortformer"
    return _residual_graph(
        f"HookedTransformer({cfg.n_layers}L x {cfg.n_heads}H)", n_layers=cfg.n_layers, H=cfg.n_heads,
        has_mlp=not cfg.attn_only, embed_fn=lambda x: model.embed(x), pos_fn=lambda x: model.pos_embed(x),
        mix=[mix_fn(b) for b in blocks], head_out=[head_out_fn(b) for b in blocks],
        mlp_fn=[(lambda b: lambda r: b.mlp(b.ln2(r)))(b) for b in blocks],
        out_fn=lambda r: model.unembed(model.ln_final(r)),
        b_O=[b.attn.b_O.detach() for b in blocks], shortformer=short, model=model)


def hf_gpt2_graph(model: nn.Module) -> Graph:
    """Graph of a Hugging Face GPT-2-family model (``GPT2Model`` or ``GPT2LMHeadModel``), eager math
    re-expressed per head from the model's own weights (scaled dot-product, causal mask)."""
    cfg = model.config
    tr = model.transformer if hasattr(model, "transformer") else model
    H, d = cfg.n_head, cfg.n_embd
    dh = d // H
    blocks = list(tr.h)
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
        raise ModelError("GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")

    def mix_fn(b):
        def mix(q_in, k_in, v_in):
            W, bias = b.attn.c_attn.weight, b.attn.c_attn.bias  # Conv1D: [d, 3d]
            Wq, Wk, Wv = (W[:, i * d:(i + 1) * d].view(d, H, dh) for i in range(3))
            bq, bk, bv = (bias[i * d:(i + 1) * d].view(H, dh) for i in range(3))
            q = torch.einsum("bthd,dhe->bthe", b.ln_1(q_in), Wq) + bq
            k = torch.einsum("bthd,dhe->bthe", b.ln_1(k_in), Wk) + bk
            v = torch.einsum("bthd,dhe->bthe", b.ln_1(v_in), Wv) + bv
            T = q.shape[1]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k)
            if getattr(cfg, "scale_attn_weights", True):
                scores = scores / math.sqrt(dh)
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), torch.finfo(scores.dtype).min)
            return torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)
        return mix

    def head_out_fn(b):
        return lambda z: torch.einsum("bthe,hed->bthd", z, b.attn.c_proj.weight.view(H, dh, d))

    def out_fn(r):
        r = tr.ln_f(r)
        return model.lm_head(r) if hasattr(model, "lm_head") else r

    return _residual_graph(
        f"{type(model).__name__}({cfg.n_layer}L x {H}H)", n_layers=cfg.n_layer, H=H, has_mlp=True,
        embed_fn=lambda x: tr.wte(x), pos_fn=lambda x: tr.wpe(torch.arange(x.shape[1], device=x.device)).expand(x.shape[0], -1, -1),
        mix=[mix_fn(b) for b in blocks], head_out=[head_out_fn(b) for b in blocks],
        mlp_fn=[(lambda b: lambda r: b.mlp(b.ln_2(r)))(b) for b in blocks], out_fn=out_fn,
        b_O=[b.attn.c_proj.bias.detach() for b in blocks], shortformer=False, model=model,
        notes=["dropout ignored: evaluate in eval mode"])


# ====================================================================== torch.fx
def fx_graph(model: nn.Module, *, leaf_types: tuple = ()) -> Graph:
    """Module-level graph of any model torch.fx can trace.

    Nodes: the input placeholder (``input``), every ``call_module`` and every tensor-valued
    function / method call (``add``, ``flatten``, ...), and ``out``. Each node has one slot per
    tensor argument (``in`` for the first, ``in1``, ``in2``, ... for more), and an edge from
    each argument's producer. A skip connection ``y = block(x) + x`` gives ``add`` two slots,
    so the paths through the block and through the skip are different paths.
    """
    import torch.fx as fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)

    try:
        traced = Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types
        raise ModelError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}",
                         hint="fx graphs need a model without data-dependent control flow; pass leaf_types=(...) for untraceable submodules") from None
    gm = fx.GraphModule(model, traced)
    placeholders = [n for n in traced.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"fx graphs support models with one input, {type(model).__name__} has {len(placeholders)}")
    names: dict = {}
    nodes: dict[str, Node] = {}
    groups: list[Group] = []
    edges: list[Edge] = []
    mods = dict(gm.named_modules())

    def arg_nodes(n):
        found = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: found.append(a))
        uniq = []
        for a in found:
            if a not in uniq and a in names:
                uniq.append(a)
        return uniq

    for n in traced.nodes:
        if n.op == "placeholder":
            names[n] = "input"
            nodes["input"] = Node("input", "input")
            groups.append(Group("input", "input", ("input",), lambda x: [x]))
        elif n.op in ("call_module", "call_function", "call_method"):
            srcs = arg_nodes(n)
            if not srcs:
                continue  # constants
            nm = n.target if n.op == "call_module" else n.name
            if nm in ("input", "out") or nm in nodes:  # reserved names; a module called twice
                k = 1
                while f"{nm}#{k}" in nodes:
                    k += 1
                nm = f"{nm}#{k}"
            names[n] = nm
            slots = tuple("in" if i == 0 else f"in{i}" for i in range(len(srcs)))
            nodes[nm] = Node(nm, "component", slots)
            edges += [Edge(names[a], nm, s) for a, s in zip(srcs, slots)]
            groups.append(Group(nm, "component", (nm,), _fx_fn(n, srcs, slots, nm, mods)))
        elif n.op == "output":
            srcs = arg_nodes(n)
            if len(srcs) != 1:
                raise ModelError("fx graphs need a model returning one tensor")
            nodes["out"] = Node("out", "output", ("in",))
            edges.append(Edge(names[srcs[0]], "out"))
            groups.append(Group("output", "output", ("out",), lambda slots: [slots[("out", "in")]]))
        elif n.op == "get_attr":
            continue
    return Graph(f"fx({type(model).__name__})", nodes, groups, edges, {}, model,
                 ["one node per module / function call; a node's slots are its tensor arguments"])


def _fx_fn(n, srcs, slots, nm, mods):
    import torch.fx as fx

    def fn(values):
        env = {a: values[(nm, s)] for a, s in zip(srcs, slots)}
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == "call_module":
            return [mods[n.target](*args, **kwargs)]
        if n.op == "call_function":
            return [n.target(*args, **kwargs)]
        self_obj, *rest = args
        return [getattr(self_obj, n.target)(*rest, **kwargs)]
    return fn


# ====================================================================== dispatch
def build_graph(model: nn.Module, kind: str = "auto") -> Graph:
    """The computational graph of ``model``: ``kind`` = auto | transformer | tl | hf | fx."""
    cls = type(model).__name__
    if kind == "auto":
        if hasattr(model, "cfg") and isinstance(getattr(model, "cfg"), dict) and hasattr(model, "blocks") and hasattr(model.blocks[0].attn, "mix"):
            kind = "transformer"
        elif cls == "HookedTransformer":
            kind = "tl"
        elif getattr(getattr(model, "config", None), "model_type", None) == "gpt2":
            kind = "hf"
        else:
            kind = "fx"
    builders = {"transformer": transformer_graph, "tl": tl_graph, "hf": hf_gpt2_graph, "fx": fx_graph}
    if kind not in builders:
        raise ConfigError(f"unknown graph kind {kind!r}", hint=f"one of auto, {', '.join(builders)}")
    return builders[kind](model)
