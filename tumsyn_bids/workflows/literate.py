"""Workflows that carry the methods text of what they do, and the walk that collects it.

The nipreps convention (niworkflows' ``LiterateWorkflow``): every ``init_*_wf`` factory sets a
``__desc__`` on the workflow it returns, a methods paragraph formatted with the settings the
workflow was built with, and optionally a ``__postdesc__`` that goes after the paragraphs of
its sub-workflows. The boilerplate of a run (:mod:`tumsyn_bids.workflows.citation`) is then the
text of the workflows that were actually built, in the order they run, so the methods text
cannot describe a step the run did not take, and a new step brings its own text.

References in the text are written as ``[@key]`` or ``[@key1; @key2]``, keys of
:data:`tumsyn_bids.workflows.citation.REFERENCES`; they are numbered when the boilerplate is
assembled.
"""

from __future__ import annotations

import networkx as nx
from nipype.pipeline import engine as pe

__all__ = ["LiterateWorkflow", "visit_desc"]


class LiterateWorkflow(pe.Workflow):
    """A nipype ``Workflow`` with a methods paragraph: ``__desc__`` and ``__postdesc__``.

    Both are None or Markdown text. ``__desc__`` describes what this workflow does and is
    placed before the texts of the workflows nested in it; ``__postdesc__`` after them.
    """

    def __init__(self, name: str, base_dir: str | None = None) -> None:
        super().__init__(name, base_dir=base_dir)
        self.__desc__: str | None = None
        self.__postdesc__: str | None = None


def _in_graph_order(workflow: pe.Workflow) -> list:
    """The nodes of ``workflow``'s own graph in execution order; ties keep insertion order."""
    graph = workflow._graph
    rank = {node: i for i, node in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=rank.__getitem__))


def visit_desc(workflow: pe.Workflow) -> list[str]:
    """The methods texts of ``workflow`` and of every workflow nested in it, each text once.

    Order: the workflow's ``__desc__``, then its sub-workflows in the order they run (a
    topological order of its graph; unconnected sub-workflows in the order they were added),
    each visited the same way, then its ``__postdesc__``. Any nipype ``Workflow`` is visited,
    so a plain ``Workflow`` (a per-participant container, say) contributes the texts of its
    sub-workflows; ``__desc__``/``__postdesc__`` are read where present. Texts are stripped of
    surrounding white space; empty ones are skipped; a text equal to one already collected
    (the same step built for many images) is kept only the first time. The result depends only
    on the graph, never on execution, so the same workflow always gives the same texts.
    """
    texts: list[str] = []

    def add(text: str | None) -> None:
        text = (text or "").strip()
        if text and text not in texts:
            texts.append(text)

    def visit(wf: pe.Workflow) -> None:
        add(getattr(wf, "__desc__", None))
        for node in _in_graph_order(wf):
            if isinstance(node, pe.Workflow):
                visit(node)
        add(getattr(wf, "__postdesc__", None))

    visit(workflow)
    return texts
