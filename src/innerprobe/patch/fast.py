"""Fast exact evaluator for edge-set hypotheses (Goldowsky-Dill et al. 2023, arXiv 2304.05969, §2.1).

Same quantity as the two-version algorithm (docs/patching.md, "Evaluators"): for K edge masks w
(1 = edge keeps x_r, 0 = edge carries x_c, fractions interpolate), each node v has the patched
value a^H(v) = a(v; x_r) + d(v), and each slot (v, s) reads

    slot^H(v, s) = clean slot + sum_{u -> v:s} d(u) + sum_{e = u -> v:s} (1 - w_e) (a(u; x_c) - a(u; x_r) - d(u))

How the cost follows the work (docs/patching.md, "Fast evaluator"):

* **Rows.** A node is computed only on the mask rows where one of its inputs changed (a row is
  one hypothesis; all its B examples go along). Everything upstream of a row's first changed
  edge is the clean run, reused as is. Members of a group that supports subsets are computed
  only where they changed, so K single-edge rows into different heads of one layer cost one
  head each.
* **Residual deltas.** ``R = sum d(u)`` over the changed nodes that still have readers is kept
  once per activation shape; a slot's first sum is ``R`` minus the few changed nodes it does not
  read (none in a residual stream), one add per changed node in all instead of one per
  (slot, source).
* **Edge terms.** The patched edges into a slot are one matrix product of the [K, J]
  coefficients with a cached table of ``a(u; x_c) - a(u; x_r)`` (the table's rows follow the
  graph's topological order, so a slot's sources are one slice of it).

The plan (which rows and nodes change) is read from a CPU copy of the masks; activations never
leave their device. Masks per position ``[K, B, T, E]`` weigh each edge term per example and
position (one einsum instead of one product). Graphs with position-restricted edges are refused by
name (:func:`supports`, :func:`supports_masks`); the reference evaluator in :mod:`.path` handles
what this one does not.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch

from ..core.graph import Graph
from ..errors import ConfigError

DEFAULT_BUDGET = 1 << 30  # bytes of working memory per chunk of mask rows (1 GiB)
CPU_BUDGET = 1 << 26  # the default on the CPU (64 MiB)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 10**3,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 10**9,
    "gib": 1 << 30,
}


def parse_bytes(value, device=None) -> int:
    """``"2GiB"``, ``"500MB"``, ``1 << 30`` -> bytes. ``None`` -> the default: 1 GiB, or 64 MiB
    when ``device`` is the CPU, where chunks that stay in cache run faster (induction-attn2l: 2 rows
    a chunk; the GPT-2-small shape: 1 row, whose own work is most of a forward; docs/patching.md,
    "Benchmark")."""
    if value is None:
        return CPU_BUDGET if device is not None and torch.device(device).type == "cpu" else DEFAULT_BUDGET
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if m is None or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"memory budget {value!r} is not a size", hint="e.g. '2GiB', '500MB' or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def supports(graph: Graph) -> str | None:
    """None if the fast evaluator handles ``graph``, else the reason (by name) it does not."""
    return _cached(_SUPPORTS, graph, lambda: _why_not(graph))


def supports_masks(graph: Graph, runs, masks: torch.Tensor) -> str | None:
    """None if the fast evaluator takes ``masks`` ([K, E], [K, B, E], or per position [K, B, T, E]
    when every edge's sender is a [B, T, ...] activation), else the reason."""
    if masks.dim() <= 3:
        return None
    if masks.dim() > 4:
        return f"an edge mask has 2 to 4 axes, not {masks.dim()}"
    B, T = masks.shape[1:3]
    bad = [u for u in {e.src for e in graph.edges} if tuple(runs.clean[u].shape[:2]) != (B, T)]
    if bad:
        shape = tuple(runs.clean[bad[0]].shape)
        return f"a position-aware mask [K, B, T={T}, E] needs [B, T, ...] senders; {bad[0]} is {shape}"
    return None


def _why_not(graph: Graph) -> str | None:
    pos = [e for e in graph.edges if getattr(e, "positions", None) not in (None, ())]
    if pos:
        return f"position-restricted edges (e.g. {pos[0]}) are not handled by the fast evaluator yet"
    return None


# ----------------------------------------------------------------------------- cached structure
@dataclass
class _Info:
    """Structure of a graph the evaluator needs, computed once per graph."""

    gindex: dict  # node -> index of its group in graph.groups
    slot_src: dict  # (node, slot) -> tuple of source names
    slot_srcset: dict  # (node, slot) -> frozenset of source names
    node_srcs: dict  # node -> frozenset of every source of every slot
    last_reader: dict  # node -> index of the last group reading it (-1: none)
    full_reader: dict  # node -> every slot of every later group reads it
    edge_slot: list  # edge index -> (dst, slot)
    edge_src: list  # edge index -> src


def _structure(graph: Graph) -> _Info:
    gindex = {n: i for i, g in enumerate(graph.groups) for n in g.nodes}
    slot_src = {k: tuple(graph.edges[i].src for i in idx) for k, idx in graph.incoming.items()}
    node_srcs = {n: frozenset(u for s in graph.nodes[n].slots for u in slot_src[(n, s)]) for n in graph.nodes}
    n_groups = len(graph.groups)
    slots_after = [0] * (n_groups + 1)
    for i in range(n_groups - 1, -1, -1):
        slots_after[i] = slots_after[i + 1] + sum(len(graph.nodes[n].slots) for n in graph.groups[i].nodes)
    readers: dict = {n: set() for n in graph.nodes}
    for e in graph.edges:
        readers[e.src].add((e.dst, e.slot))
    last = {n: max((gindex[d] for d, _ in r), default=-1) for n, r in readers.items()}
    full = {n: len(readers[n]) == slots_after[gindex[n] + 1] and len(readers[n]) > 0 for n in graph.nodes}
    return _Info(
        gindex,
        slot_src,
        {k: frozenset(v) for k, v in slot_src.items()},
        node_srcs,
        last,
        full,
        [(e.dst, e.slot) for e in graph.edges],
        [e.src for e in graph.edges],
    )


_INFO: dict = {}
_SUPPORTS: dict = {}
_TABLES: dict = {}


def _cached(store: dict, obj, make):
    key = id(obj)
    hit = store.get(key)
    if hit is None or hit[0]() is not obj:
        hit = (weakref.ref(obj), make())
        store[key] = hit
        weakref.finalize(obj, store.pop, key, None)
    return hit[1]


class _Tables:
    """Per (graph, runs): clean slot values and the difference tables a(u; x_c) - a(u; x_r), one
    per activation shape, rows in topological order; built lazily."""

    def __init__(self, graph: Graph, runs):
        self.graph, self.runs = graph, runs
        self.slots: dict = {}
        self.rows: dict = {}  # node -> (shape key, row)
        self.tabs: dict = {}  # shape key -> [N, B, ...] tensor
        self.inner: dict = {}  # group name -> its clean intermediates (HeadsGroup.parts)
        self._built = False

    def clean_slot(self, n: str, s: str) -> torch.Tensor:
        v = self.runs.clean_slots.get((n, s)) if self.runs.clean_slots else None
        if v is None:
            v = self.slots.get((n, s))
            if v is None:
                g = self.graph
                v = g.slot_value(n, s, [self.runs.clean[g.edges[i].src] for i in g.incoming[(n, s)]])
                self.slots[(n, s)] = v
        return v

    def parts(self, grp):
        """The group's clean intermediates (``grp.parts`` of its clean slots), made once."""
        p = self.inner.get(grp.name)
        if p is None:
            slots = {(n, s): self.clean_slot(n, s) for n in grp.nodes for s in self.graph.nodes[n].slots}
            p = self.inner[grp.name] = grp.parts(slots)
        return p

    def group_sum(self, grp) -> torch.Tensor:
        """Sum of the clean outputs of a group's members (cached)."""
        v = self.slots.get(grp.name)
        if v is None:
            v = self.slots[grp.name] = torch.stack([self.runs.clean[n] for n in grp.nodes]).sum(0)
        return v

    def table(self, src: str):
        if not self._built:
            self._build()
        key, row = self.rows[src]
        return self.tabs[key], row

    def _build(self):
        srcs = {e.src for e in self.graph.edges}
        groups: dict = {}
        for n in self.graph.order:
            if n in srcs:
                c = self.runs.clean[n]
                groups.setdefault(_shape_key(c), []).append(n)
        for key, names in groups.items():
            for r, n in enumerate(names):
                self.rows[n] = (key, r)
            self.tabs[key] = torch.stack([self.runs.cf[n] - self.runs.clean[n] for n in names])
        self._built = True


def _shape_key(t: torch.Tensor):
    return (tuple(t.shape), t.dtype, t.device)


# ----------------------------------------------------------------------------- entry point
@torch.no_grad()
def fast_evaluate(
    graph: Graph, runs, masks: torch.Tensor, *, chunk: int | None = None, memory_budget=None
) -> torch.Tensor:
    """Outputs [K, B, ...] of K edge-set hypotheses (``masks`` [K, E] or per example [K, B, E]).

    Rows run ``chunk`` at a time; without ``chunk`` the chunk size comes from ``memory_budget``
    (bytes or a string such as ``"2GiB"``; default 1 GiB, 64 MiB on the CPU: :func:`parse_bytes`)
    and the graph's largest group.
    """
    why = supports(graph) or supports_masks(graph, runs, masks)
    if why is not None:
        raise ConfigError(
            why, hint="use innerprobe.patch.path.evaluate_edges, which falls back to the reference evaluator"
        )
    info = _cached(_INFO, graph, lambda: _structure(graph))
    tabs = _cached(_TABLES, runs, lambda: _Tables(graph, runs))
    out0 = runs.clean["out"]
    B = out0.shape[0]
    K = masks.shape[0]
    step = chunk or rows_for_budget(graph, runs, parse_bytes(memory_budget, out0.device))
    m_cpu = masks.detach().to("cpu")
    m_dev = masks.detach().to(device=out0.device, dtype=out0.dtype if out0.is_floating_point() else torch.float32)
    if K <= step:  # one chunk: its output is the result
        return _Chunk(graph, info, tabs, runs, m_cpu, m_dev, B).run()
    res = out0.new_empty((K, *out0.shape))  # each chunk writes its rows here (no concatenation)
    for k in range(0, K, step):
        _Chunk(graph, info, tabs, runs, m_cpu[k : k + step], m_dev[k : k + step], B).run(res[k : k + step])
    return res


def rows_for_budget(graph: Graph, runs, budget: int, *, receiver: int | None = None) -> int:
    """How many mask rows fit in ``budget`` bytes: a row holds, at the widest group, its slot
    inputs, outputs and the family's internals (taken as twice the inputs), plus the residual
    deltas; each of those is B examples. With ``receiver`` (a group index: every row patches one
    edge into that group, as in a single-edge sweep) only that group and the ones after it count,
    the receiving group with one member per row when it computes head subsets. The bytes per row
    are computed once per (graph, runs)."""
    full, one, extra = _cached(_ROW_BYTES, runs, lambda: _group_bytes(graph, runs))
    if receiver is None:
        per_row = max(full, default=0)
    else:
        per_row = max([one[receiver], *full[receiver + 1 :]])
    return max(1, int(budget // max(per_row + extra, 1)))


_ROW_BYTES: dict = {}


def _group_bytes(graph: Graph, runs) -> tuple[list, list, int]:
    """Bytes per row of each group (all members; one member where it computes subsets) and of the
    residual deltas."""

    def numel(t):
        return t.numel() * t.element_size()

    full, one = [], []
    for g in graph.groups:
        if g.kind == "input":
            full.append(0)
            one.append(0)
            continue
        ins = [
            sum(
                numel(runs.clean[graph.edges[graph.incoming[(n, s)][0]].src])
                for s in graph.nodes[n].slots
                if graph.incoming[(n, s)]
            )
            for n in g.nodes
        ]
        outs = [numel(runs.clean[n]) for n in g.nodes]
        full.append(3 * sum(ins) + 2 * sum(outs))
        one.append(max(3 * i + 2 * o for i, o in zip(ins, outs)) if g.subsets else full[-1])
    return full, one, 4 * max(numel(v) for v in runs.clean.values())


def _bits(changed: torch.Tensor) -> list[int]:
    """Column-wise row bitmasks of a [K, J] bool tensor (python ints, any K)."""
    K = changed.shape[0]
    if K <= 62:
        w = torch.tensor([1 << k for k in range(K)], dtype=torch.int64)
        return (changed.to(torch.int64) * w[:, None]).sum(0).tolist()
    return [sum(1 << int(k) for k in col.nonzero().flatten()) for col in changed.T]


def _union(bits) -> int:
    u = 0
    for b in bits:
        u |= b
    return u


def _signatures(sb: dict, b: int) -> list:
    """(slots, rows): the rows of ``b`` split by which slots changed there (``sb``: slot -> rows)."""
    names = list(sb)
    out = []
    for m in range(1, 1 << len(names)):
        r = b
        for j, s in enumerate(names):
            r &= sb[s] if m >> j & 1 else ~sb[s]
        if r:
            out.append((frozenset(s for j, s in enumerate(names) if m >> j & 1), r))
    return out


def _row_list(bits: int) -> list[int]:
    out, k = [], 0
    while bits:
        if bits & 1:
            out.append(k)
        bits >>= 1
        k += 1
    return out


class _Chunk:
    """One chunk of mask rows through the graph (see the module docstring)."""

    def __init__(self, graph, info, tabs, runs, m_cpu, m_dev, B):
        self.g, self.info, self.tabs, self.runs = graph, info, tabs, runs
        self.m, self.B = m_dev, B
        self.K = m_cpu.shape[0]
        self.full = (1 << self.K) - 1
        self.per_example = m_cpu.dim() >= 3  # [K, B, E], or [K, B, T, E] per position
        ch = m_cpu != 1
        ch_rows = ch.flatten(1, -2).any(1) if self.per_example else ch
        cols = ch_rows.any(0).nonzero().flatten().tolist()
        self.edge_bits = dict(zip(cols, _bits(ch_rows[:, cols]))) if cols else {}
        self.slot_edges: dict = {}
        for i in cols:
            self.slot_edges.setdefault(info.edge_slot[i], []).append(i)
        self.bits: dict = {}  # changed node -> row bitmask
        self.d: dict = {}  # node -> (rows or None = all, d(node) on those rows), kept only while needed
        self.R: dict = {}  # shape key -> (sum of d over self.active[key])
        self.owned: set = set()  # keys whose R is this chunk's own tensor (else it is a node's d, read only)
        self.active: dict = {}  # shape key -> set of nodes in R
        self.edge_srcs = {info.edge_src[i] for i in cols}
        self.final = (None, None)  # (rows or None = all, the output on those rows)

    # -------------------------------------------------------------- driver
    def run(self, res: torch.Tensor | None = None) -> torch.Tensor:
        """The chunk's outputs [K, B, ...], written into ``res`` when given."""
        if self.edge_bits:
            start = min(self.info.gindex[self.info.edge_slot[i][0]] for i in self.edge_bits)
            for gi in range(start, len(self.g.groups)):
                grp = self.g.groups[gi]
                if grp.kind != "input":
                    self._group(gi, grp)
        rows, out = self.final
        if rows is None and out is not None:
            return out if res is None else res.copy_(out)
        out0 = self.runs.clean["out"]
        res = out0.expand(self.K, *out0.shape).clone() if res is None else res.copy_(out0.expand_as(res))
        return res if out is None else res.index_copy_(0, rows, out)

    def _node_bits(self, n: str) -> int:
        b = 0
        for s in self.g.nodes[n].slots:
            for i in self.slot_edges.get((n, s), ()):
                b |= self.edge_bits[i]
        for u in self.info.node_srcs[n] & self.bits.keys():
            b |= self.bits[u]
        return b

    def _slot_bits(self, n: str) -> dict:
        """slot -> bitmask of the rows where that slot of ``n`` changed."""
        out = {}
        for s in self.g.nodes[n].slots:
            b = 0
            for i in self.slot_edges.get((n, s), ()):
                b |= self.edge_bits[i]
            for u in self.info.slot_srcset[(n, s)] & self.bits.keys():
                b |= self.bits[u]
            out[s] = b
        return out

    def _group(self, gi: int, grp) -> None:
        reuse = getattr(grp, "reuse", None) is not None
        sbits = {n: self._slot_bits(n) for n in grp.nodes} if reuse else None
        if reuse:
            need = {n: b for n, sb in sbits.items() if (b := _union(sb.values()))}
        else:
            need = {n: b for n in grp.nodes if (b := self._node_bits(n))}
        if self._summed(gi, grp, need):
            self._compute_total(grp)
        elif need:
            if reuse:
                calls = self._reuse_calls(need, sbits)
            elif grp.subsets:
                by_rows: dict = {}
                for n, b in need.items():
                    by_rows.setdefault(b, []).append(n)
                calls = [(b, nodes, None) for b, nodes in by_rows.items()]
            else:
                calls = [(_union(need.values()), list(grp.nodes), None)]
            pieces: dict = {}
            for b, nodes, changed in calls:
                self._compute(grp, nodes, b, changed, pieces)
            self._store(pieces, need)
        self._after_group(gi, grp, need)

    def _reuse_calls(self, need: dict, sbits: dict) -> list:
        """Calls (rows, members, changed slots) of a group that reuses clean intermediates: each
        member's rows split by which of its slots changed there; ``changed`` None = every slot."""
        by_key: dict = {}
        for n, b in need.items():
            sb = sbits[n]
            for sig, rows in _signatures(sb, b):
                by_key.setdefault((rows, sig), []).append(n)
        return [(b, nodes, None if len(sig) == len(sbits[nodes[0]]) else sig) for (b, sig), nodes in by_key.items()]

    def _summed(self, gi: int, grp, need: dict) -> bool:
        """Whether only the sum of the group's outputs is needed: every member changed on every row,
        read by every later slot (so only R carries it) and the source of no patched edge."""
        info = self.info
        return (
            getattr(grp, "total", None) is not None
            and gi < len(self.g.groups) - 1
            and len(need) == len(grp.nodes)
            and all(b == self.full and info.full_reader[n] and n not in self.edge_srcs for n, b in need.items())
        )

    def _compute_total(self, grp) -> None:
        clean = self.tabs.group_sum(grp)
        out = grp.total(self._slots(grp.nodes, None, self.K)).reshape(self.K, *clean.shape)
        key = _shape_key(clean)
        if key in self.R:
            self._owned(key).add_(out).sub_(clean)
        else:
            self.R[key] = out.sub(clean)
            self.owned.add(key)
        self.active.setdefault(key, set()).update(grp.nodes)
        for n in grp.nodes:
            self.bits[n] = self.full

    # -------------------------------------------------------------- one call of a group function
    def _slots(self, nodes, rows, k: int) -> dict:
        shared: dict = {}
        slots = {}
        for n in nodes:
            for s in self.g.nodes[n].slots:
                key = (self.info.slot_srcset[(n, s)], id(self.g.const.get((n, s))))
                plain = (n, s) not in self.slot_edges
                if plain and key in shared:
                    slots[(n, s)] = shared[key]
                    continue
                v = self._slot(n, s, rows, k)
                slots[(n, s)] = v
                if plain:
                    shared[key] = v
        return slots

    def _compute(self, grp, nodes: list, b: int, changed, pieces: dict) -> None:
        """Members ``nodes`` on the rows of ``b``; with ``changed`` (slot names) only those slots
        are built and the group reuses its clean intermediates for the rest."""
        rows = None if b == self.full else torch.tensor(_row_list(b), device=self.m.device)
        k = self.K if rows is None else int(rows.numel())
        if changed is None:
            outs = self.g.run_group(grp, self._slots(nodes, rows, k), nodes)
        else:
            slots = {(n, s): self._slot(n, s, rows, k) for n in nodes for s in changed}
            outs = grp.reuse(self.tabs.parts(grp), slots, nodes, changed, k)
        for n, o in zip(nodes, outs):
            pieces.setdefault(n, []).append((b, k, o.reshape(k, self.B, *o.shape[1:])))

    def _store(self, pieces: dict, need: dict) -> None:
        """Keep each changed member's output (its pieces on disjoint rows merged into one tensor)."""
        for n, ps in pieces.items():
            if n not in need:
                continue
            b, k, o = ps[0] if len(ps) == 1 else self._merge(ps)
            rows = None if b == self.full else torch.tensor(_row_list(b), device=self.m.device)
            if n == "out":  # the output itself, not its change: run() writes it out
                self.final = (rows, o)
                continue
            self.d[n] = (rows, o - self.runs.clean[n])  # one call per node and chunk
            self.bits[n] = self.bits.get(n, 0) | b

    def _merge(self, ps: list):
        b = _union(p[0] for p in ps)
        where = {r: i for i, r in enumerate(_row_list(b))}
        out = ps[0][2].new_empty((len(where), *ps[0][2].shape[1:]))
        for pb, _, o in ps:
            out.index_copy_(0, torch.tensor([where[r] for r in _row_list(pb)], device=o.device), o)
        return b, len(where), out

    def _slot(self, n: str, s: str, rows, k: int) -> torch.Tensor:
        clean = self.tabs.clean_slot(n, s)
        D = self.info.slot_srcset[(n, s)] & self.bits.keys()
        edges = self.slot_edges.get((n, s))
        if not D and not edges:
            val = clean.unsqueeze(0).expand(k, *clean.shape)
        else:
            val = clean + self._dirty_sum(D, clean, rows) if D else None  # a fresh tensor, updated in place below
            if edges:
                val = self._add_edge_term(val, clean, edges, rows, k)
        return val.reshape(k * self.B, *clean.shape[1:])

    def _dirty_sum(self, D, clean, rows) -> torch.Tensor:
        """sum_{u in D} d(u) on ``rows``, as R minus the changed nodes the slot does not read when
        that is fewer terms (always, in a residual stream). Every node in D is in R (it has a
        reader: this slot); nodes R holds but D lacks are not full readers, so they are kept."""
        key = _shape_key(clean)
        missing = self.active[key] - D
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        if len(missing) < len(D) or not all(u in self.d for u in D):
            total = pick(self.R[key])
            for u in missing:
                total = total - self._pick(u, rows)
            return total
        total = None
        for u in D:
            total = self._pick(u, rows) if total is None else total + self._pick(u, rows)
        return total

    def _add_edge_term(self, val, clean, edges: list, rows, k: int) -> torch.Tensor:
        """``val`` (or the clean slot, when None) plus sum_e (1 - w_e) (a(u; x_c) - a(u; x_r) - d(u))
        over the changed edges into one slot: one (add)mm of the [k, J] coefficients with the J
        table rows of the edges' sources."""
        c = 1 - (self.m[..., edges] if rows is None else self.m[rows][..., edges])  # [k, J] or [k, B, J]
        srcs = [self.info.edge_src[i] for i in edges]
        coef, sl = self._coef_rows(c, srcs)
        J = sl.shape[0]
        if self.per_example:  # coefficients per example (and position): [k, B(, T), J] x [J, B(, T), x]
            lead = coef.shape[1:-1]
            sub = "kbj,jbx->kbx" if len(lead) == 1 else "kbtj,jbtx->kbtx"
            t = torch.einsum(sub, coef, sl.reshape(J, *lead, -1)).reshape(k, *clean.shape)
            val = clean + t if val is None else val.add_(t)
        elif val is None:
            val = torch.addmm(clean.reshape(1, -1), coef, sl.reshape(J, -1)).reshape(k, *clean.shape)
        else:
            val.view(k, -1).addmm_(coef, sl.reshape(J, -1))
        for j, u in enumerate(srcs):  # the part through sources that are themselves patched
            if u in self.d:
                dj = self._pick(u, rows)
                val.sub_(c[..., j].reshape(*c.shape[:-1], *([1] * (dj.dim() - c.dim() + 1))) * dj)
        return val

    def _coef_rows(self, c: torch.Tensor, srcs: list):
        """Coefficients over table rows and those rows: the contiguous span of the sources' rows
        when it is short, else just their rows (a slot late in a deep graph has hundreds of sources
        and a chunk patches a few of them)."""
        tab = self.tabs.table(srcs[0])[0]
        where = [self.tabs.table(u)[1] for u in srcs]
        lo, hi = min(where), max(where) + 1
        if hi - lo <= 2 * len(set(where)):
            coef = c.new_zeros((*c.shape[:-1], hi - lo))
            coef[..., [w - lo for w in where]] = c
            return coef, tab[lo:hi]
        uniq = sorted(set(where))
        coef = c.new_zeros((*c.shape[:-1], len(uniq)))
        pos = {w: i for i, w in enumerate(uniq)}
        coef[..., [pos[w] for w in where]] = c
        return coef, tab.index_select(0, torch.tensor(uniq, device=tab.device))

    # -------------------------------------------------------------- bookkeeping
    def _add_R(self, key, r, d: torch.Tensor) -> None:
        """R[key] += d on rows ``r`` (None = all). The first d on all rows becomes R itself (no copy)."""
        if key not in self.R:
            if r is None:
                self.R[key] = d
                return
            self.R[key] = d.new_zeros((self.K, *d.shape[1:]))
            self.owned.add(key)
        R = self._owned(key)
        if r is None:
            R.add_(d)
        else:
            R.index_add_(0, r, d)

    def _owned(self, key) -> torch.Tensor:
        """R[key] as this chunk's own tensor, to update in place (a borrowed d is copied once)."""
        if key not in self.owned:
            self.R[key] = self.R[key].clone()
            self.owned.add(key)
        return self.R[key]

    def _pick(self, n: str, rows) -> torch.Tensor:
        """d(n) on ``rows`` (None = every row); zero on the rows where n did not change."""
        r, t = self.d[n]
        if r is None:
            return t if rows is None else t[rows]
        full = t.new_zeros((self.K, *t.shape[1:]))
        full[r] = t
        return full if rows is None else full[rows]

    def _after_group(self, gi: int, grp, need: dict) -> None:
        last = len(self.g.groups) - 1
        if gi == last:
            return
        for n in need:
            if self.info.last_reader[n] <= gi or n not in self.d:  # not in d: summed straight into R
                continue
            r, d = self.d[n]
            key = _shape_key(d[0])
            self._add_R(key, r, d)
            self.active.setdefault(key, set()).add(n)
            if self.info.full_reader[n] and n not in self.edge_srcs:
                del self.d[n]  # carried by R from here on
        for key, act in self.active.items():
            for v in [v for v in act if self.info.last_reader[v] <= gi]:
                act.discard(v)
                self._owned(key).sub_(
                    self._pick(v, None)
                )  # v is no full reader (those are read by the last group), so kept
                del self.d[v]
        for n in [n for n in self.d if n != "out" and self.info.last_reader[n] <= gi]:
            del self.d[n]
