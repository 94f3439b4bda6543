"""Path-patching hypotheses: the set P of input -> output paths claimed to matter.

Goldowsky-Dill et al. 2023 (arXiv 2304.05969) §2: H = (G, delta, P, D). Every path in P is fed
the reference input x_r, every other path the counterfactual x_c.

Text form (a file, or ``;``-separated on the command line), one item a line, ``#`` comments::

    all                                 every path
    none                                no path
    edge embed -> a1.*:q                edges (globs allowed); paths made only of listed edges
    embed -> a0.1:v -> a1.2:k -> out    a path pattern; NODE or NODE:SLOT with globs per token
    embed -> ... -> a1.2 -> out         '...' stands for any (possibly empty) run of nodes

A hypothesis made only of ``edge`` lines is an *edge set* (ACDC/EAP circuits) and is evaluated
by the two-version algorithm; anything else becomes an explicit path set, evaluated by memoised
treeification, unless its path set happens to equal its edges' closure.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ..core.graph import Edge, Graph
from ..errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Resolved:
    """A hypothesis bound to a graph: its path set (None when only edges were given and nobody
    asked for paths) and its edge set (None when P is not an edge set)."""

    edges: frozenset | None
    paths: frozenset | None
    name: str = ""


@dataclass
class Hypothesis:
    """``Hypothesis.parse("embed -> a1.*:v -> out")``, ``Hypothesis.from_edges([...])``, ``.all()``."""

    items: list = field(default_factory=list)  # ("all",) | ("none",) | ("edge", src, dst) | ("path", tokens)
    name: str = ""

    # -------------------------------------------------------------- constructors
    @classmethod
    def all(cls, name: str = "all paths") -> "Hypothesis":
        return cls([("all",)], name)

    @classmethod
    def none(cls, name: str = "no paths") -> "Hypothesis":
        return cls([("none",)], name)

    @classmethod
    def from_edges(cls, edges, name: str = "") -> "Hypothesis":
        items = []
        for e in edges:
            if isinstance(e, Edge):
                items.append(("edge", e.src, f"{e.dst}:{e.slot}"))
            else:
                src, dst = _split_edge(str(e), str(e))
                items.append(("edge", src, dst))
        return cls(items, name)

    @classmethod
    def from_paths(cls, paths, name: str = "") -> "Hypothesis":
        """Paths as token lists (``["embed", "a0.1:v", "a1.2:k", "out"]``), strings, or Edge tuples."""
        items = []
        for p in paths:
            if isinstance(p, str):
                items.append(("path", _tokens(p, p)))
            elif p and isinstance(p[0], Edge):
                items.append(("path", [p[0].src] + [f"{e.dst}:{e.slot}" for e in p]))
            else:
                items.append(("path", [str(t).strip() for t in p]))
        return cls(items, name)

    @classmethod
    def parse(cls, text: str, name: str = "") -> "Hypothesis":
        items = []
        lines = [l for chunk in text.splitlines() for l in chunk.split(";")]
        for raw in lines:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            low = line.lower()
            if low in ("all", "none"):
                items.append((low,))
            elif low.startswith("edge ") or low.startswith("edges "):
                src, dst = _split_edge(line.split(None, 1)[1], raw)
                items.append(("edge", src, dst))
            else:
                items.append(("path", _tokens(line, raw)))
        if not items:
            raise ConfigError("empty hypothesis", hint="write 'all', 'none', 'edge SRC -> DST:SLOT' or a path 'embed -> a1.0:v -> out'")
        return cls(items, name or text.strip().replace("\n", "; ")[:80])

    @classmethod
    def load(cls, file_or_text: str) -> "Hypothesis":
        from pathlib import Path

        p = Path(file_or_text)
        if "\n" not in file_or_text and len(file_or_text) < 255 and p.suffix in (".txt", ".hyp", ".path") :
            if not p.exists():
                raise ConfigError(f"hypothesis file {p} does not exist", hint="pass a file, or the hypothesis text itself")
            return cls.parse(p.read_text(), name=p.stem)
        return cls.parse(file_or_text)

    def __or__(self, other: "Hypothesis") -> "Hypothesis":
        return Hypothesis(self.items + other.items, f"{self.name} | {other.name}")

    def to_text(self) -> str:
        out = []
        for it in self.items:
            if it[0] in ("all", "none"):
                out.append(it[0])
            elif it[0] == "edge":
                out.append(f"edge {it[1]} -> {it[2]}")
            else:
                out.append(" -> ".join(it[1]))
        return "\n".join(out)

    # -------------------------------------------------------------- resolution
    def resolve(self, graph: Graph, *, need_paths: bool = False) -> Resolved:
        """Validate against ``graph``; unknown nodes or non-paths raise ConfigError naming them."""
        kinds = {it[0] for it in self.items}
        if "all" in kinds:
            return Resolved(frozenset(graph.edges), frozenset(graph.paths()) if need_paths else None, self.name)
        edges: set[Edge] = set()
        for it in self.items:
            if it[0] == "edge":
                edges |= _match_edges(graph, it[1], it[2])
        if kinds <= {"edge", "none"}:
            paths = frozenset(p for p in graph.paths() if all(e in edges for e in p)) if need_paths else None
            return Resolved(frozenset(edges), paths, self.name)
        paths = {p for p in graph.paths() if all(e in edges for e in p)} if edges else set()
        for it in self.items:
            if it[0] == "path":
                hits = _match_paths(graph, it[1])
                paths |= hits
        P = frozenset(paths)
        E = frozenset(e for p in P for e in p)
        closure = frozenset(p for p in graph.paths() if all(e in E for e in p))
        return Resolved(E if closure == P else None, P, self.name)


def _split_edge(text: str, raw: str) -> tuple[str, str]:
    if "->" not in text:
        raise ConfigError(f"edge {raw.strip()!r} needs the form SRC -> DST[:SLOT]", hint="e.g. 'edge a0.1 -> a1.*:k'")
    src, dst = (s.strip() for s in text.split("->", 1))
    if not src or not dst or "->" in dst:
        raise ConfigError(f"edge {raw.strip()!r} must name exactly one source and one receiver")
    return src, dst


def _tokens(line: str, raw: str) -> list[str]:
    toks = [t.strip() for t in line.replace("→", "->").split("->")]
    if len(toks) < 2 or any(not t for t in toks):
        raise ConfigError(f"path {raw.strip()!r} needs at least two nodes joined by '->'", hint="e.g. 'embed -> a1.0:v -> out'")
    return toks


def _split_tok(tok: str) -> tuple[str, str | None]:
    node, _, slot = tok.partition(":")
    return node.strip(), (slot.strip() or None)


def _check_token(graph: Graph, tok: str) -> None:
    if tok == "...":
        return
    node, slot = _split_tok(tok)
    hits = [n for n in graph.nodes if fnmatch.fnmatchcase(n, node)]
    if not hits:
        raise ConfigError(f"hypothesis names unknown node {node!r}", hint=did_you_mean(node, graph.nodes) + f" (nodes: {' '.join(graph.nodes)})")
    if slot is not None and not any(any(fnmatch.fnmatchcase(s, slot) for s in graph.nodes[n].slots) for n in hits):
        have = sorted({s for n in hits for s in graph.nodes[n].slots})
        raise ConfigError(f"node {node!r} has no slot {slot!r}", hint=f"its slots: {', '.join(have) or 'none (an input node)'}")


def _match_edges(graph: Graph, src: str, dst: str) -> set[Edge]:
    _check_token(graph, src)
    _check_token(graph, dst)
    dnode, dslot = _split_tok(dst)
    out = {e for e in graph.edges if fnmatch.fnmatchcase(e.src, src) and fnmatch.fnmatchcase(e.dst, dnode)
           and (dslot is None or fnmatch.fnmatchcase(e.slot, dslot))}
    if not out:
        raise ConfigError(f"'edge {src} -> {dst}' matches no edge of graph {graph.name}",
                          hint=f"edges into {dnode}: " + ", ".join(str(e) for e in graph.edges if fnmatch.fnmatchcase(e.dst, dnode))[:300])
    return out


def _elem_ok(tok: str, elem: tuple[str, str | None]) -> bool:
    node, slot = _split_tok(tok)
    return fnmatch.fnmatchcase(elem[0], node) and (slot is None or (elem[1] is not None and fnmatch.fnmatchcase(elem[1], slot)))


def _matches(toks: list[str], elems: list) -> bool:
    memo = {}

    def go(i, j):
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(toks):
            r = j == len(elems)
        elif toks[i] == "...":
            r = go(i + 1, j) or (j < len(elems) and go(i, j + 1))
        else:
            r = j < len(elems) and _elem_ok(toks[i], elems[j]) and go(i + 1, j + 1)
        memo[key] = r
        return r

    return go(0, 0)


def path_elements(path) -> list:
    return [(path[0].src, None)] + [(e.dst, e.slot) for e in path]


def _match_paths(graph: Graph, toks: list[str]) -> set:
    for t in toks:
        _check_token(graph, t)
    hits = {p for p in graph.paths() if _matches(toks, path_elements(p))}
    if not hits:
        line = " -> ".join(toks)
        lit = [t for t in toks if t != "..."]
        if toks[0] != "..." and not any(_elem_ok(toks[0], (n, None)) for n in graph.inputs):
            raise ConfigError(f"path {line!r} does not start at an input node", hint=f"inputs: {', '.join(graph.inputs)}; or start with '...'")
        if toks[-1] != "..." and not _elem_ok(toks[-1], ("out", "in")):
            raise ConfigError(f"path {line!r} does not end at 'out'", hint="end with '-> out' or '-> ...'")
        for a, b in zip(toks, toks[1:]):
            if "..." in (a, b):
                continue
            if not any(fnmatch.fnmatchcase(e.src, _split_tok(a)[0]) and _elem_ok(b, (e.dst, e.slot)) for e in graph.edges):
                raise ConfigError(f"path {line!r} is not a path: no edge from {a!r} to {b!r}",
                                  hint="a later layer cannot feed an earlier one; each step must be an edge of the graph")
        raise ConfigError(f"path {line!r} matches no input -> output path of graph {graph.name}", hint=f"tokens: {lit}")
    return hits


def describe_paths(paths) -> list[str]:
    return [" -> ".join([p[0].src] + [e.dst + ("" if e.slot == "in" else f":{e.slot}") for e in p]) for p in sorted(paths)]
