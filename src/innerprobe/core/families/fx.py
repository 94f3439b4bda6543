"""torch.fx fallback: a module-level graph of any model torch.fx can trace (no canonical sites).

Checked against the model when an example input is given (``build_graph(model, example=x)``)
and, like every graph, on the reference input by :func:`innerprobe.patch.path.prepare`.
"""

from __future__ import annotations

from torch import fx, nn

from ...errors import ModelError
from ..dag import Edge, Graph, Group, Node
from .base import Family


def fx_graph(model: nn.Module, *, leaf_types: tuple = ()) -> Graph:
    """Module-level graph of any model torch.fx can trace.

    Nodes: the input placeholder (``input``), every ``call_module`` and every tensor-valued
    function / method call (``add``, ``flatten``, ...), and ``out``. Each node has one slot per
    tensor argument (``in`` for the first, ``in1``, ``in2``, ... for more), and an edge from
    each argument's producer. A skip connection ``y = block(x) + x`` gives ``add`` two slots,
    so the paths through the block and through the skip are different paths.
    """

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)

    try:
        traced = Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types
        raise ModelError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}",
            hint="fx graphs need a model without data-dependent control flow; pass leaf_types=(...) for untraceable "
            "submodules",
        ) from None
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
    return Graph(
        f"fx({type(model).__name__})",
        nodes,
        groups,
        edges,
        {},
        model,
        ["one node per module / function call; a node's slots are its tensor arguments"],
    )


def _fx_fn(n, srcs, slots, nm, mods):
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


FAMILY = Family(
    "fx", lambda model: True, lambda model: {}, fx_graph, description="any model torch.fx traces (fallback)"
)
