"""Compiled hypotheses: path sets given as automata, evaluated without listing paths, with positions.

Goldowsky-Dill et al. 2023 (arXiv 2304.05969) §2: G_H feeds x_r to every path in P and the
counterfactual to the others. Here P = I \\ X, where I (included) and X (excluded) are unions of
automata over a path's *elements* ``[(input, None), (node_1, slot_1), ..., (out, "in")]``:

* ``ALL`` accepts every path; an :class:`EdgeAutomaton` accepts the paths made only of its edges
  (the edge closure of an edge set; state = the last node); a :class:`PatternAutomaton` accepts the
  paths matching a token pattern (``embed -> ... -> a1.2:q -> out``; ``...`` is any run of nodes,
  ``...m*`` any run of nodes matching ``m*``).
* An element may be restricted to **positions**: entering slot ``s`` of ``w`` *at token positions*
  T (absolute, negative, or a per-example index such as each prompt's END). Residual edges are
  position-wise (the value a sender writes at position t is read at position t), so restricting
  the receiver's position restricts the sender's too.

**Evaluation** (docs/patching.md, "Compiled hypotheses"): the treeified copy of node v reached by
suffix s depends only on the sets of automaton states from which s is accepted (one set for I, one
for X), so copies are memoised on (v, live_I, live_X): the work is one forward pass per distinct
state set, never one per path. A copy with no included prefix takes the counterfactual value
A_c(v) (the x_c run, or the mean / zero ablation of :func:`innerprobe.patch.path.prepare`); one
whose every prefix is in P (I = all, nothing excluded) takes the clean value. Where the sets differ
by position, a slot reads each position from the copy whose sets hold there.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from ..core.dag import Edge, Graph
from ..errors import ConfigError

ALL_STATE = ("all",)


# ----------------------------------------------------------------------------- positions
def position_mask(spec, B: int, T: int, named: dict | None, device=None) -> torch.Tensor:
    """Bool [B, T]: the positions of ``spec`` (tuple of ints and/or names bound in ``named``: an
    int, or a [B] index tensor such as each prompt's END position)."""
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    for p in spec:
        if isinstance(p, str):
            if not named or p not in named:
                raise ConfigError(
                    f"position {p!r} is not bound", hint=f"pass positions={{{p!r}: tensor of {B} indices}}"
                )
            idx = torch.as_tensor(named[p], device=device).long().reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(B)
            if idx.numel() != B:
                raise ConfigError(f"position {p!r} has {idx.numel()} indices for a batch of {B}")
        else:
            idx = torch.full((B,), int(p), device=device)
        if bool(((idx < -T) | (idx >= T)).any()):
            raise ConfigError(f"position {p!r} is out of range for sequences of length {T}")
        mask[torch.arange(B, device=device), idx % T] = True
    return mask


def parse_positions(text: str | None):
    """``'3'``, ``'-1'``, ``'2,5'``, ``'1:4'``, ``'END'``, ``'S2,END'`` -> tuple (None for no text)."""
    if text is None or not text.strip():
        return None
    out: list = []
    for tok in text.split(","):
        tok = tok.strip()
        if ":" in tok:
            a, b = tok.split(":")
            out.extend(range(int(a), int(b)))
        elif tok.lstrip("-").isdigit():
            out.append(int(tok))
        elif tok.isidentifier():
            out.append(tok)
        else:
            raise ConfigError(
                f"bad position {tok!r}", hint="integers (negative from the end), ranges a:b, or a name such as END"
            )
    return tuple(out)


# ----------------------------------------------------------------------------- automata
@dataclass(frozen=True)
class Token:
    """One pattern token: alternatives (node glob, slot glob or None = any slot), optional positions
    of the element, and ``any``: '...' = any (possibly empty) run of elements matching the alternatives."""

    alts: tuple = (("*", None),)
    positions: tuple | None = None
    any: bool = False

    def matches(self, elem) -> bool:
        n, s = elem
        return any(
            fnmatch.fnmatchcase(n, a) and (b is None or (s is not None and fnmatch.fnmatchcase(s, b)))
            for a, b in self.alts
        )


class Automaton:
    """States are hashable; conditions are None (every position) or a position spec."""

    def initial(self, u: str) -> set:
        raise NotImplementedError

    def pred(self, u: str, elem, live) -> dict:
        """{state q of the prefix ending at u: position spec or None} with step(q, elem) in ``live``."""
        raise NotImplementedError

    def accepting(self) -> frozenset:
        raise NotImplementedError


class AllAutomaton(Automaton):
    def initial(self, u):
        return {ALL_STATE}

    def pred(self, u, elem, live):
        return {ALL_STATE: None} if ALL_STATE in live else {}

    def accepting(self):
        return frozenset({ALL_STATE})


class EdgeAutomaton(Automaton):
    """Paths made only of edges in ``edges`` ({Edge: position spec or None})."""

    def __init__(self, edges: dict, tag: int):
        self.edges, self.tag = edges, tag

    def initial(self, u):
        return {(self.tag, u)}

    def pred(self, u, elem, live):
        w, s = elem
        e = Edge(u, w, s)
        if (self.tag, w) in live and e in self.edges:
            return {(self.tag, u): self.edges[e]}
        return {}

    def accepting(self):
        return frozenset({(self.tag, "out")})


class PatternAutomaton(Automaton):
    """A token pattern; state i = tokens 0..i-1 consumed."""

    def __init__(self, tokens: list[Token], tag: int):
        self.toks, self.tag, self.n = tokens, tag, len(tokens)
        self._steps: dict = {}

    def closure(self, i: int) -> list[int]:
        out = [i]
        while i < self.n and self.toks[i].any:
            i += 1
            out.append(i)
        return out

    def step(self, i: int, elem) -> dict:
        key = (i, elem)
        if key not in self._steps:
            self._steps[key] = self._step(i, elem)
        return self._steps[key]

    def _step(self, i: int, elem) -> dict:
        res: dict = {}
        for j in self.closure(i):
            if j >= self.n:
                continue
            t = self.toks[j]
            if t.matches(elem):
                nxt = j if t.any else j + 1
                res[nxt] = _or(res[nxt], t.positions) if nxt in res else t.positions
        return res

    def initial(self, u):
        return {(self.tag, i) for i in self.step(0, (u, None))}

    def pred(self, u, elem, live):
        out: dict = {}
        for i in range(self.n + 1):
            for nxt, cond in self.step(i, elem).items():
                if (self.tag, nxt) in live:
                    out[(self.tag, i)] = _or(out[(self.tag, i)], cond) if (self.tag, i) in out else cond
        return out

    def accepting(self):
        return frozenset((self.tag, i) for i in range(self.n + 1) if self.n in self.closure(i))


def _or(a, b):
    return None if a is None or b is None else tuple(dict.fromkeys(a + b))


@dataclass
class Compiled:
    """P = union(include) minus union(exclude)."""

    include: list = field(default_factory=list)
    exclude: list = field(default_factory=list)
    name: str = ""

    def accepts(self, path) -> bool:
        """Whether an explicit path (tuple of Edges) is in P, ignoring positions (for tests)."""
        elems = [(path[0].src, None)] + [(e.dst, e.slot) for e in path]
        return _accepts_any(self.include, elems) and not _accepts_any(self.exclude, elems)

    @property
    def positional(self) -> bool:
        for a in self.include + self.exclude:
            if isinstance(a, EdgeAutomaton) and any(v is not None for v in a.edges.values()):
                return True
            if isinstance(a, PatternAutomaton) and any(t.positions is not None for t in a.toks):
                return True
        return False


def _accepts_any(automata, elems) -> bool:
    for a in automata:
        states = a.initial(elems[0][0])
        for el in elems[1:]:
            nxt = set()
            for q in states:
                nxt |= _forward(a, q, el)
            states = nxt
        if states & a.accepting():
            return True
    return False


def _forward(a, q, el) -> set:
    if isinstance(a, AllAutomaton):
        return {ALL_STATE}
    if isinstance(a, EdgeAutomaton):
        return {(a.tag, el[0])} if Edge(q[1], el[0], el[1]) in a.edges else set()
    return {(a.tag, j) for j in a.step(q[1], el)}


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_compiled(graph: Graph, runs, compiled: Compiled, *, positions: dict | None = None) -> torch.Tensor:
    """G_H for a compiled hypothesis (module docstring); ``positions`` binds named positions (END)."""
    x = next(iter(runs.clean.values()))
    B = x.shape[0]
    T = x.shape[1] if x.dim() >= 2 else 1
    ev = _Evaluator(graph, runs, compiled, B, T, positions, x.device)
    live_i = frozenset().union(*[a.accepting() for a in compiled.include]) if compiled.include else frozenset()
    live_x = frozenset().union(*[a.accepting() for a in compiled.exclude]) if compiled.exclude else frozenset()
    out = ev.value("out", live_i, live_x)[0]
    runs.stats["compiled_copies"] = len(ev.memo)
    return out


class _Evaluator:
    def __init__(self, graph, runs, compiled, B, T, named, device):
        self.g, self.runs, self.c = graph, runs, compiled
        self.B, self.T, self.named, self.device = B, T, named, device
        self.memo: dict = {}
        self.masks: dict = {}
        self.sets: dict = {}  # live-set splits; keyed without the sender when no automaton depends on it
        self.by_sender = any(isinstance(a, EdgeAutomaton) for a in compiled.include + compiled.exclude)

    def mask(self, spec) -> torch.Tensor:
        if spec not in self.masks:
            if self.T <= 1 and spec is not None:
                raise ConfigError("positions need a graph whose values are [batch, position, ...]")
            self.masks[spec] = position_mask(spec, self.B, self.T, self.named, self.device)
        return self.masks[spec]

    def value(self, node: str, li: frozenset, lx: frozenset):
        """(value, on) of a copy: ``on`` = some leaf under it is fed x_r. A copy with no such leaf
        takes A_c(node), one whose every path is in P the clean value."""
        key = (node, li, lx)
        if key not in self.memo:
            if not li:
                self.memo[key] = (self.runs.cf[node], False)
            elif not lx and ALL_STATE in li:
                self.memo[key] = (self.runs.clean[node], True)
            else:
                self.memo[key] = self.compute(node, li, lx)
        return self.memo[key]

    def compute(self, node, li, lx):
        g = self.g
        slot_vals, on = {}, False
        for s in g.nodes[node].slots:
            contrib = []
            for i in g.incoming[(node, s)]:
                v, o = self.read(g.edges[i].src, (node, s), li, lx)
                contrib.append(v)
                on = on or o
            slot_vals[s] = g.slot_value(node, s, contrib)
        if not on:
            return self.runs.cf[node], False
        grp = g.group_of[node]
        if grp.subsets:
            return g.run_group(grp, {(node, s): v for s, v in slot_vals.items()}, [node])[0], True
        return g.node_forward(node, slot_vals), True

    def live_sets(self, u, elem, li, lx):
        """[(mask or None, live_I, live_X)] for the child u read through ``elem``, per position."""
        key = (u if self.by_sender else None, elem, li, lx)
        if key not in self.sets:
            self.sets[key] = self._live_sets(u, elem, li, lx)
        return self.sets[key]

    def _live_sets(self, u, elem, li, lx):
        pi = {q: c for a in self.c.include for q, c in a.pred(u, elem, li).items()}
        px = {q: c for a in self.c.exclude for q, c in a.pred(u, elem, lx).items()}
        conds = {**{("i",) + (q,): c for q, c in pi.items()}, **{("x",) + (q,): c for q, c in px.items()}}
        fixed = [k for k, c in conds.items() if c is None]
        varying = [k for k, c in conds.items() if c is not None]

        def split(keys):
            return (frozenset(k[1] for k in keys if k[0] == "i"), frozenset(k[1] for k in keys if k[0] == "x"))

        if not varying:
            return [(None, *split(fixed))]
        bits = torch.stack([self.mask(conds[k]) for k in varying]).long()  # [k, B, T]
        code = (bits * (2 ** torch.arange(len(varying), device=bits.device)).view(-1, 1, 1)).sum(0)
        out = []
        for c in torch.unique(code).tolist():
            keys = fixed + [k for j, k in enumerate(varying) if (c >> j) & 1]
            out.append((code == c, *split(keys)))
        return out

    def read(self, u, elem, li, lx):
        parts = self.live_sets(u, elem, li, lx)
        vals = [
            (m, self.leaf(u, a, b) if self.g.nodes[u].kind == "input" else self.value(u, a, b)) for m, a, b in parts
        ]
        on = any(o for _, (_, o) in vals)
        if len(vals) == 1:
            return vals[0][1][0], on
        total = None
        for m, (v, _) in vals:
            term = v * m.view(*m.shape, *([1] * (v.dim() - 2))).to(v.dtype)
            total = term if total is None else total + term
        return total, on

    def leaf(self, u, li, lx):
        on_i = any(a.initial(u) & li for a in self.c.include)
        on_x = any(a.initial(u) & lx for a in self.c.exclude)
        return (self.runs.inputs_r[u], True) if on_i and not on_x else (self.runs.inputs_c[u], False)
