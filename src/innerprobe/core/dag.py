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
(checked when a family builds the graph: :func:`innerprobe.core.families.build_graph`).

**One "where".** A node carries its canonical site (``a0.1`` is ``L0.z[heads=1]``, ``m2`` is
``L2.mlp_out``, ``embed`` is ``embed``, ``out`` is ``logits``) and a receiving slot carries the
site that reads it (``a1.2:q`` is ``L1.q[heads=2]``; ``m1:in`` is ``L1.mlp_in``). Every lookup
(:meth:`Graph.node`, :meth:`Graph.edge`, :meth:`Graph.senders`, :meth:`Graph.receivers`) takes
the short names and the site strings as aliases of the same objects; see docs/patching.md.
This module holds only the data structures; the builders live in :mod:`innerprobe.core.families`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelError, SiteError, did_you_mean
from .site import Site


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "input" | "component" | "output"
    slots: tuple[str, ...] = ()
    layer: int | None = None
    head: int | None = None
    site: str | None = None  # canonical site of the node's value (a0.1 -> "L0.z[heads=1]"), if it has one
    slot_sites: tuple = ()  # ((slot, site string), ...): the site that reads each slot ("q" -> "L0.q[heads=1]")


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
    total: Callable | None = None  # total(slots): the sum of every member's output (patch.fast, issue 12)


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
        self._index_sites()

    def _index_sites(self) -> None:
        """Site string -> node names (senders) and -> (node, slot) pairs (receivers); a site without
        ``heads`` (``L1.z``) also stands for all its heads."""
        self.site_nodes: dict[str, list[str]] = {}
        self.site_slots: dict[str, list[tuple[str, str]]] = {}

        def add(index, text, item):
            keys = [text]
            site = Site.parse(text)
            if site.heads is not None:
                keys.append(str(site.with_(heads=None)))
            for k in keys:
                index.setdefault(k, [])
                if item not in index[k]:
                    index[k].append(item)

        for n in self.nodes.values():
            if n.site:
                add(self.site_nodes, n.site, n.name)
            for slot, text in n.slot_sites:
                add(self.site_slots, text, (n.name, slot))

    # ------------------------------------------------------------------ lookup
    @property
    def inputs(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.kind == "input"]

    def node(self, name: str) -> Node:
        """A node by short name (``a0.1``) or by its site (``L0.z[heads=1]``)."""
        if name in self.nodes:
            return self.nodes[name]
        hits = self.site_nodes.get(_site_key(name))
        if hits and len(hits) == 1:
            return self.nodes[hits[0]]
        if hits:
            raise ConfigError(
                f"site {name!r} stands for {len(hits)} nodes of graph {self.name}",
                hint=f"pick one: {', '.join(hits[:8])}",
            )
        raise ConfigError(
            f"graph {self.name} has no node {name!r}", hint=did_you_mean(name, list(self.nodes) + list(self.site_nodes))
        )

    def site_of(self, node: str) -> str:
        """The canonical name of a node: its site where it has one, else its short name."""
        return self.nodes[node].site or node

    def senders(self, token: str) -> list[str]:
        """Nodes named by ``token``: a short name or glob (``a1.*``) or a site (``L1.z[heads=0,2]``, ``L1.z``)."""
        token = token.strip()
        hits = [n for n in self.nodes if fnmatch.fnmatchcase(n, token)]
        return hits or list(self.site_nodes.get(_site_key(token), []))

    def receivers(self, token: str) -> list[tuple[str, str | None]]:
        """(node, slot) pairs named by ``token``: ``NODE[:SLOT]`` with globs (slot None = every slot),
        a reading site (``L1.q[heads=2]``, ``L1.mlp_in``, ``logits``), or a node's site plus a slot
        (``L1.z[heads=0]:q``). Under grouped-query attention ``L1.k[heads=g]`` is the k slot of
        every query head that reads K/V head g."""
        token = token.strip()
        node, slot = split_slot(token)
        hits = [(n, slot) for n in self.nodes if fnmatch.fnmatchcase(n, node)]
        if hits:
            return hits
        key = _site_key(node)
        if slot is not None:
            return [(n, slot) for n in self.site_nodes.get(key, [])]
        if key in self.site_slots:
            return list(self.site_slots[key])
        return [(n, None) for n in self.site_nodes.get(key, [])]

    def edge(self, spec: str | Edge) -> Edge:
        """``graph.edge("a0.1->a1.2:k")`` (slot defaults to ``in``)."""
        if isinstance(spec, Edge):
            e = spec
        else:
            if "->" not in spec:
                raise ConfigError(
                    f"edge {spec!r} needs the form SRC->DST[:SLOT]", hint="e.g. 'a0.1->a1.2:k' or 'a1.2->out'"
                )
            src, dst = (s.strip() for s in spec.split("->", 1))
            srcs, dsts = self.senders(src), self.receivers(dst)
            if len(srcs) > 1 or len(dsts) > 1:
                raise ConfigError(
                    f"edge {spec!r} names {len(srcs)} senders and {len(dsts)} receivers, not one each",
                    hint="use a Hypothesis 'edge' line for sets of edges",
                )
            dnode, dslot = split_slot(dst)
            e = Edge(srcs[0] if srcs else src, dsts[0][0] if dsts else dnode, (dsts[0][1] if dsts else dslot) or "in")
        if e not in self.edge_index:
            self.node(e.src)
            d = self.node(e.dst)
            if e.slot not in d.slots:
                raise ConfigError(f"node {e.dst} has no slot {e.slot!r}", hint=f"its slots: {', '.join(d.slots)}")
            raise ConfigError(
                f"{e} is not an edge of graph {self.name}", hint=did_you_mean(str(e), [str(x) for x in self.edges])
            )
        return e

    def paths(self, limit: int = 200_000) -> list[Path]:
        """Every input -> output path, as tuples of edges (enumerated once, cached)."""
        if self._paths is None:
            n_paths = self.count_paths()
            if n_paths > limit:
                raise ConfigError(
                    f"graph {self.name} has {n_paths} paths, more than {limit}",
                    hint="use edge-set or compiled hypotheses (they never enumerate paths)",
                )
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
                                raise ConfigError(
                                    f"graph {self.name} has more than {limit} paths",
                                    hint="use edge-set hypotheses (they never enumerate paths)",
                                )
                    memo[n] = res
                return memo[n]

            self._paths = [p for i in self.inputs for p in from_node(i)]
        return self._paths

    def count_paths(self) -> int:
        """Number of input -> output paths (dynamic programming; nothing is listed)."""
        to_out: dict[str, int] = {"out": 1}
        for n in reversed(self.order):
            if n != "out":
                to_out[n] = sum(to_out.get(self.edges[i].dst, 0) for i in self.outgoing[n])
        return sum(to_out[n] for n in self.inputs)

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
            slots = {
                (n, s): self.slot_value(n, s, [acts[self.edges[i].src] for i in self.incoming[(n, s)]])
                for n in g.nodes
                for s in self.nodes[n].slots
            }
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
        lines = [
            f"Graph {self.name}: {len(self.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
            f"{len(self.edges)} edges"
        ]
        for g in self.groups:
            lines.append(f"  {g.name:<10} {' '.join(g.nodes)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def split_slot(token: str) -> tuple[str, str | None]:
    """``'a1.2:q'`` -> ('a1.2', 'q'); ``'L1.z[heads=0]:q'`` -> ('L1.z[heads=0]', 'q'). The slot is what
    follows the last ':' outside brackets; ``:input`` / ``:output`` are site ports, not slots."""
    depth, cut = 0, -1
    for i, c in enumerate(token):
        depth += (c == "[") - (c == "]")
        if c == ":" and depth == 0:
            cut = i
    if cut < 0:
        return token.strip(), None
    node, slot = token[:cut].strip(), token[cut + 1 :].strip()
    if slot.split(".")[0] in ("input", "output"):
        return token.strip(), None
    return node, slot or None


def _site_key(text: str) -> str:
    """Canonical spelling of a site string without positions (those restrict edges, not nodes)."""
    try:
        return str(Site.parse(text).with_(positions=None))
    except SiteError:  # not a site: no key
        return text.strip()
