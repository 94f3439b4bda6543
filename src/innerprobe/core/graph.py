"""Computational graphs for path patching: the public entry point.

The data structures live in :mod:`innerprobe.core.dag` (:class:`Graph`, :class:`Node`,
:class:`Edge`, :class:`Group`) and the builders in the family registry
(:mod:`innerprobe.core.families`); this module re-exports both. ``build_graph(model)`` detects the
family, builds its graph and checks it against the model (docs/patching.md).
"""

from __future__ import annotations

from .dag import Edge, Graph, Group, Node, Path
from .families import build_graph, detect
from .families.fx import fx_graph
from .families.hf_gpt2 import graph as hf_gpt2_graph
from .families.llama import graph as llama_graph
from .families.neox import graph as neox_graph
from .families.tl import graph as tl_graph
from .families.zoo import graph as transformer_graph

__all__ = [
    "Edge",
    "Graph",
    "Group",
    "Node",
    "Path",
    "build_graph",
    "detect",
    "fx_graph",
    "hf_gpt2_graph",
    "llama_graph",
    "neox_graph",
    "tl_graph",
    "transformer_graph",
]
