"""Path-patching hypotheses: the set P of input -> output paths claimed to matter.

Goldowsky-Dill et al. 2023 (arXiv 2304.05969) §2: H = (G, delta, P, D). Every path in P is fed
the reference input x_r, every other path the counterfactual x_c.

Text form (a file, or ``;``-separated on the command line), one item a line, ``#`` comments::

    all                                 every path
    none                                no path
    edge embed -> a1.*:q                edges (globs allowed); paths made only of listed edges
    embed -> a0.1:v -> a1.2:k -> out    a path pattern; NODE or NODE:SLOT with globs per token
    embed -> ... -> a1.2 -> out         '...' stands for any (possibly empty) run of nodes
    ... -> a0.1 -> ...m* -> a1.2:q -> ...   '...m*' is any run of nodes matching m* (MLPs)
    edge embed -> L1.z[heads=0]:q       site names are aliases of the graph's nodes / slots
    edge embed -> L1.q[heads=0]         the same edge: L1.q[heads=h] is the q slot of a1.h
    edge a0.1 -> a1.2:q @ END           positions: ints (negative from the end), a:b, or names
    edge a0.1 -> L1.q[heads=2;pos=-1]   ... bound at evaluation (positions={"END": idx})
    ... -> a0.1 -> a1.2:q@-1 -> ...     a position on a path token restricts that element
    all except edge a5.3 -> a9.6:q      complements: 'all except ...' or 'except ...' lines
    except path ... -> a0.1 -> ...      remove the paths matching a pattern

P = (union of the all / edge / path lines) minus (union of the except lines); with only except
lines the union is every path. An edge line means the *closure* of its edges (the paths made only
of listed edges). A hypothesis made only of ``edge`` lines without positions is an *edge set*
(ACDC/EAP circuits), evaluated by the two-version algorithm; any other becomes a
:class:`~innerprobe.patch.compiled.Compiled` automaton evaluated without listing paths
(:func:`~innerprobe.patch.compiled.evaluate_compiled`); small path sets can also be listed
(``resolve(graph, need_paths=True)``) for the memoised and brute-force reference evaluators.
IOI-style helpers: :meth:`Hypothesis.sender_receiver` (docs/patching.md).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ..core.dag import Edge, Graph, split_slot
from ..core.site import Site
from ..errors import ConfigError, SiteError, did_you_mean
from .compiled import AllAutomaton, Compiled, EdgeAutomaton, PatternAutomaton, Token, parse_positions


@dataclass(frozen=True)
class Resolved:
    """A hypothesis bound to a graph: its path set (None when only edges were given and nobody
    asked for paths) and its edge set (None when P is not an edge set)."""

    edges: frozenset | None
    paths: frozenset | None
    name: str = ""
    compiled: Compiled | None = None  # the automaton form (always set by Hypothesis.resolve)


@dataclass
class Hypothesis:
    """``Hypothesis.parse("embed -> a1.*:v -> out")``, ``Hypothesis.from_edges([...])``, ``.all()``."""

    items: list = field(default_factory=list)  # ("all",) ("none",) ("edge", src, dst[, pos]) ("path", tokens)
    #                                             ("xedge", src, dst[, pos]) ("xpath", tokens): except lines
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
                src, dst, pos = _split_edge(str(e), str(e))
                items.append(("edge", src, dst, pos))
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
        lines = [line for chunk in text.splitlines() for line in _split_outside_brackets(chunk, ";")]
        for raw in lines:
            line = raw.split("#", 1)[0].strip()
            if line:
                items += _parse_line(line, raw)
        if not items:
            raise ConfigError(
                "empty hypothesis",
                hint="write 'all', 'none', 'edge SRC -> DST:SLOT' or a path 'embed -> a1.0:v -> out'",
            )
        return cls(items, name or text.strip().replace("\n", "; ")[:80])

    @classmethod
    def sender_receiver(
        cls, senders, receivers, *, positions=None, convention: str = "freeze", name: str = ""
    ) -> "Hypothesis":
        """IOI-style path patching (Wang et al. 2022, arXiv 2211.00593): every path is clean except the
        senders' effect on the receivers, which carries the counterfactual.

        ``senders`` are node names or sites (``a5.3``, ``L5.z[heads=3]``); ``receivers`` are slots
        (``a9.6:q``, ``L9.q[heads=6]``); ``positions`` restricts where the receivers read (e.g.
        ``"END"``, bound at evaluation). ``convention="freeze"``: only the direct edges sender ->
        receiver are patched (every other head and every MLP frozen at x_r), =
        ``all except edge S -> R @ pos``. ``convention="recompute-mlps"``: the senders' effect also
        reaches the receivers through MLPs (recomputed), but never through other heads, =
        ``except path ... -> S -> ...m* -> R@pos -> ...``. docs/patching.md, "IOI-style path patching".
        """
        S, R = _as_list(senders), _as_list(receivers)
        at = (
            ""
            if positions is None
            else f" @ {positions if isinstance(positions, str) else ','.join(map(str, _as_list(positions)))}"
        )
        if convention == "freeze":
            lines = [f"except edge {s} -> {r}{at}" for s in S for r in R]
        elif convention in ("recompute-mlps", "recompute_mlps"):
            lines = [f"except path ... -> {s} -> ...m* -> {r}{at.replace(' @ ', '@')} -> ..." for s in S for r in R]
        else:
            raise ConfigError(f"unknown convention {convention!r}", hint="'freeze' or 'recompute-mlps'")
        return cls.parse("\n".join(lines), name=name or f"{','.join(S)} -> {','.join(R)} ({convention})")

    @classmethod
    def load(cls, file_or_text: str) -> "Hypothesis":
        from pathlib import Path

        p = Path(file_or_text)
        if "\n" not in file_or_text and len(file_or_text) < 255 and p.suffix in (".txt", ".hyp", ".path"):
            if not p.exists():
                raise ConfigError(
                    f"hypothesis file {p} does not exist", hint="pass a file, or the hypothesis text itself"
                )
            return cls.parse(p.read_text(), name=p.stem)
        return cls.parse(file_or_text)

    def __or__(self, other: "Hypothesis") -> "Hypothesis":
        return Hypothesis(self.items + other.items, f"{self.name} | {other.name}")

    def to_text(self) -> str:
        out = []
        for it in self.items:
            if it[0] in ("all", "none"):
                out.append(it[0])
            elif it[0] in ("edge", "xedge"):
                pos = f" @ {it[3]}" if len(it) > 3 and it[3] else ""
                out.append(("except " if it[0] == "xedge" else "") + f"edge {it[1]} -> {it[2]}{pos}")
            else:
                out.append(("except path " if it[0] == "xpath" else "") + " -> ".join(it[1]))
        return "\n".join(out)

    # -------------------------------------------------------------- resolution
    def compile(self, graph: Graph) -> Compiled:
        """The automaton form of P on ``graph`` (validates every name)."""
        inc, exc, edges = [], [], {}
        for it in self.items:
            kind = it[0]
            if kind == "all":
                inc.append(AllAutomaton())
            elif kind == "edge":
                for e, pos in _edges_with_positions(graph, it).items():
                    edges[e] = _merge(edges, e, pos)
            elif kind == "xedge":
                for e, pos in _edges_with_positions(graph, it).items():
                    exc.append(
                        PatternAutomaton(
                            [Token(any=True), Token(((e.src, None),)), Token(((e.dst, e.slot),), pos), Token(any=True)],
                            len(exc),
                        )
                    )
            elif kind in ("path", "xpath"):
                toks = [_token(graph, t) for t in it[1]]
                (inc if kind == "path" else exc).append(PatternAutomaton(toks, 1000 + len(inc) + len(exc)))
        if edges:
            inc.append(EdgeAutomaton(edges, -1))
        if not any(it[0] in ("all", "none", "edge", "path") for it in self.items):
            inc.append(AllAutomaton())  # only except lines: every path minus those
        return Compiled(inc, exc, self.name)

    def resolve(self, graph: Graph, *, need_paths: bool = False) -> Resolved:
        """Validate against ``graph``; unknown nodes or non-paths raise ConfigError naming them.

        ``edges`` is set when P is an edge closure without positions; ``paths`` when asked for or
        when P is not an edge set and the graph's paths can be listed; ``compiled`` always."""
        comp = self.compile(graph)
        kinds = {it[0] for it in self.items}
        if kinds <= {"all", "none", "edge", "xedge"} and not comp.positional:
            inc = (
                graph.edges
                if ("all" in kinds or not kinds & {"none", "edge"})
                else _union_edges(graph, self.items, "edge")
            )
            E = frozenset(inc) - _union_edges(graph, self.items, "xedge")
            paths = frozenset(p for p in graph.paths() if all(e in E for e in p)) if need_paths else None
            return Resolved(E, paths, self.name, comp)
        if comp.positional:
            if need_paths:
                raise ConfigError(
                    f"hypothesis {self.name!r} restricts positions, so it is not a set of paths",
                    hint="evaluate it with innerprobe.patch.evaluate (compiled evaluator)",
                )
            return Resolved(None, None, self.name, comp)
        try:
            every = graph.paths()
        except ConfigError:
            if need_paths:
                raise
            return Resolved(None, None, self.name, comp)
        patterns = iter([a for a in comp.include if isinstance(a, PatternAutomaton)])
        for it in self.items:
            if it[0] == "path":
                one = Compiled([next(patterns)])
                if not any(one.accepts(p) for p in every):
                    _match_paths(graph, it[1])  # raises a diagnostic for a pattern that matches nothing
        P = frozenset(p for p in every if comp.accepts(p))
        E = frozenset(e for p in P for e in p)
        closure = frozenset(p for p in every if all(e in E for e in p))
        return Resolved(E if closure == P else None, P, self.name, comp)


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, int)) else list(x)


def _merge(edges: dict, e, pos):
    if e not in edges:
        return pos
    old = edges[e]
    return None if old is None or pos is None else tuple(dict.fromkeys(old + pos))


def _union_edges(graph: Graph, items, kind: str) -> frozenset:
    out: set = set()
    for it in items:
        if it[0] == kind:
            out |= set(_edges_with_positions(graph, it))
    return frozenset(out)


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for c in text:
        depth += (c == "[") - (c == "]")
        if c == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return parts + [cur]


def _parse_line(line: str, raw: str) -> list:
    low = line.lower()
    if low in ("all", "none"):
        return [(low,)]
    if low.startswith("all except "):
        return [("all",)] + _parse_line("except " + line[len("all except ") :].strip(), raw)
    if low.startswith("except "):
        rest = line[len("except ") :].strip()
        if rest.lower().startswith(("edge ", "edges ")):
            src, dst, pos = _split_edge(rest.split(None, 1)[1], raw)
            return [("xedge", src, dst, pos)]
        if rest.lower().startswith("path "):
            rest = rest[5:]
        return [("xpath", _tokens(rest, raw))]
    if low.startswith("edge ") or low.startswith("edges "):
        src, dst, pos = _split_edge(line.split(None, 1)[1], raw)
        return [("edge", src, dst, pos)]
    if low.startswith("path "):
        line = line[5:]
    return [("path", _tokens(line, raw))]


def _split_at(token: str) -> tuple[str, str | None]:
    """``'a1.2:q @ END'`` -> ('a1.2:q', 'END'): positions follow the last '@' outside brackets."""
    parts = _split_outside_brackets(token, "@")
    if len(parts) == 1:
        return token.strip(), None
    return "@".join(parts[:-1]).strip(), parts[-1].strip()


def _site_positions(token: str):
    node, _ = split_slot(token)
    try:
        return Site.parse(node).positions
    except SiteError:
        return None


def _strip_positions(token: str) -> str:
    node, slot = split_slot(token)
    try:
        site = Site.parse(node)
    except SiteError:
        return token
    if site.positions is None:
        return token
    return str(site.with_(positions=None)) + (f":{slot}" if slot else "")


def _edges_with_positions(graph: Graph, it) -> dict:
    """{Edge: positions or None} of an edge item; positions from '@ POS' or a site's pos= selector,
    given once (a residual edge carries the sender's value at position t to the receiver at t)."""
    src, dst = it[1], it[2]
    pos_text = it[3] if len(it) > 3 else None
    given = [p for p in (parse_positions(pos_text), _site_positions(src), _site_positions(dst)) if p is not None]
    if len(set(given)) > 1:
        raise ConfigError(
            f"edge {src} -> {dst} gives positions more than once ({given})",
            hint="a residual edge carries the sender's value at position t to the receiver at t: give one set",
        )
    pos = given[0] if given else None
    return {e: pos for e in _match_edges(graph, _strip_positions(src), _strip_positions(dst))}


def _token(graph: Graph, text: str) -> Token:
    text = text.strip()
    if text.startswith("..."):
        filt = text[3:].strip()
        if filt:
            _check_token(graph, filt)
        return Token(((filt or "*", None),), any=True)
    body, pos_text = _split_at(text)
    pos = parse_positions(pos_text) or _site_positions(body)
    body = _strip_positions(body)
    node, slot = split_slot(body)
    if any(fnmatch.fnmatchcase(n, node) for n in graph.nodes):
        _check_token(graph, body)
        return Token(((node, slot),), pos)
    recv = graph.receivers(body)
    if not recv:
        _check_token(graph, body)
    return Token(tuple(recv), pos)


def _split_edge(text: str, raw: str) -> tuple[str, str, str | None]:
    if "->" not in text:
        raise ConfigError(
            f"edge {raw.strip()!r} needs the form SRC -> DST[:SLOT] [@ POS]", hint="e.g. 'edge a0.1 -> a1.*:k'"
        )
    src, dst = (s.strip() for s in text.split("->", 1))
    dst, pos = _split_at(dst)
    if not src or not dst or "->" in dst:
        raise ConfigError(f"edge {raw.strip()!r} must name exactly one source and one receiver")
    return src, dst, pos


def _tokens(line: str, raw: str) -> list[str]:
    toks = [t.strip() for t in line.replace("→", "->").split("->")]
    if len(toks) < 2 or any(not t for t in toks):
        raise ConfigError(
            f"path {raw.strip()!r} needs at least two nodes joined by '->'", hint="e.g. 'embed -> a1.0:v -> out'"
        )
    return toks


def _split_tok(tok: str) -> tuple[str, str | None]:
    node, _, slot = tok.partition(":")
    return node.strip(), (slot.strip() or None)


def _check_token(graph: Graph, tok: str) -> None:
    if tok.startswith("..."):
        return
    if graph.senders(tok) or graph.receivers(tok):
        node, slot = split_slot(tok)
        if slot is None or not graph.senders(node) or any(slot in graph.nodes[n].slots for n in graph.senders(node)):
            return
    node, slot = _split_tok(tok)
    hits = [n for n in graph.nodes if fnmatch.fnmatchcase(n, node)]
    if not hits:
        raise ConfigError(
            f"hypothesis names unknown node {node!r}",
            hint=did_you_mean(node, graph.nodes) + f" (nodes: {' '.join(graph.nodes)})",
        )
    if slot is not None and not any(any(fnmatch.fnmatchcase(s, slot) for s in graph.nodes[n].slots) for n in hits):
        have = sorted({s for n in hits for s in graph.nodes[n].slots})
        raise ConfigError(
            f"node {node!r} has no slot {slot!r}", hint=f"its slots: {', '.join(have) or 'none (an input node)'}"
        )


def _match_edges(graph: Graph, src: str, dst: str) -> set[Edge]:
    """Edges from the nodes ``src`` names (globs or sites) into the slots ``dst`` names."""
    srcs = set(graph.senders(src))
    if not srcs:
        _check_token(graph, src)
    recv: dict = {}
    for n, s in graph.receivers(dst):
        recv.setdefault(n, []).append(s)
    if not recv:
        _check_token(graph, dst)
    out = {
        e
        for e in graph.edges
        if e.src in srcs and e.dst in recv and any(s is None or fnmatch.fnmatchcase(e.slot, s) for s in recv[e.dst])
    }
    if not out:
        dnode = split_slot(dst)[0]
        raise ConfigError(
            f"'edge {src} -> {dst}' matches no edge of graph {graph.name}",
            hint=f"edges into {dnode}: " + ", ".join(str(e) for e in graph.edges if e.dst in recv)[:300],
        )
    return out


def _elem_ok(tok: str, elem: tuple[str, str | None]) -> bool:
    node, slot = _split_tok(tok)
    return fnmatch.fnmatchcase(elem[0], node) and (
        slot is None or (elem[1] is not None and fnmatch.fnmatchcase(elem[1], slot))
    )


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
            raise ConfigError(
                f"path {line!r} does not start at an input node",
                hint=f"inputs: {', '.join(graph.inputs)}; or start with '...'",
            )
        if toks[-1] != "..." and not _elem_ok(toks[-1], ("out", "in")):
            raise ConfigError(f"path {line!r} does not end at 'out'", hint="end with '-> out' or '-> ...'")
        for a, b in zip(toks, toks[1:]):
            if "..." in (a, b):
                continue
            if not any(
                fnmatch.fnmatchcase(e.src, _split_tok(a)[0]) and _elem_ok(b, (e.dst, e.slot)) for e in graph.edges
            ):
                raise ConfigError(
                    f"path {line!r} is not a path: no edge from {a!r} to {b!r}",
                    hint="a later layer cannot feed an earlier one; each step must be an edge of the graph",
                )
        raise ConfigError(f"path {line!r} matches no input -> output path of graph {graph.name}", hint=f"tokens: {lit}")
    return hits


def describe_paths(paths) -> list[str]:
    return [
        " -> ".join([p[0].src] + [e.dst + ("" if e.slot == "in" else f":{e.slot}") for e in p]) for p in sorted(paths)
    ]
