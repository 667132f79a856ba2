"""Choosing the weights a compression pass touches: linear layers by module-path pattern.

A *target* is a ``linear`` node whose weight (input 1) is a ``param`` node. Its module path is
the param name without a trailing ``.weight`` (``model.layers.0.mlp.down_proj``), which is the
Hugging Face module path for models from the frontend.

Patterns (``include`` / ``exclude``, several joined by ``|``) are shell globs matched against
the module path, anchored at dotted components: ``lm_head`` matches ``lm_head``; ``down_proj``
matches every ``*.down_proj``; ``model.layers.0`` matches everything under it;
``*.layers.[0-1].*`` is a plain glob. ``exclude`` wins over ``include``, and also matches the
linear node's scope (a tied LM head, whose weight is the embedding table, is still ``lm_head``);
``lm_head`` is excluded by default (pruning or quantizing the output projection costs far more
quality than it saves).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from llmc.ir.graph import Graph, Node
from llmc.ir.params import Param
from llmc.passes.base import PassOptionError

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head",)


@dataclass
class Target:
    node: Node
    param: Param
    path: str

    @property
    def out_features(self) -> int:
        return int(self.param.type.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.param.type.shape[1])


def module_path(param_name: str) -> str:
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def matches(path: str, pattern: str) -> bool:
    pattern = pattern.strip()
    if not pattern:
        return False
    return (
        fnmatch.fnmatchcase(path, pattern)
        or fnmatch.fnmatchcase(path, pattern + ".*")
        or fnmatch.fnmatchcase(path, "*." + pattern)
        or fnmatch.fnmatchcase(path, "*." + pattern + ".*")
    )


def select_linears(
    graph: Graph,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    *,
    ops: tuple[str, ...] = ("linear",),
    pass_name: str = "",
) -> list[Target]:
    """The target linears, one per weight param, in graph order."""
    all_targets: list[Target] = []
    seen: set[str] = set()
    for n in graph.nodes:
        if n.op not in ops or len(n.inputs) < 2:
            continue
        p = graph.param_of(n.inputs[1])
        if p is None or p.name in seen or len(p.type.shape) != 2:
            continue
        seen.add(p.name)
        all_targets.append(Target(n, p, module_path(p.name)))
    where = f"pass '{pass_name}': " if pass_name else ""
    for pat in include:
        if pat != "*" and not any(matches(t.path, pat) for t in all_targets):
            example = all_targets[0].path if all_targets else "(the graph has no linear layers)"
            raise PassOptionError(
                f"{where}include pattern '{pat}' matches no linear layer (paths look like "
                f"'{example}')"
            )
    # exclude also by the linear's own module scope: a tied LM head reads the embedding table
    # (path ``model.embed_tokens``) from scope ``lm_head``, and ``lm_head`` must still exclude it
    return [
        t
        for t in all_targets
        if any(matches(t.path, p) for p in include)
        and not any(matches(t.path, p) or matches(t.node.scope, p) for p in exclude)
    ]
