"""The verifier: a table of rules, each a function yielding error strings.

Run after every pass by the PassManager (and in tests after every transformation). A rule never
raises; :func:`verify` collects every finding and raises one :class:`VerifyError` listing them.

Invariants checked (cite them by rule name in errors elsewhere):

- ``ssa``: every value is defined once, before use, in the same graph or as a region input;
  graph outputs are defined; regions use only their own inputs and nodes (no implicit capture).
- ``ops``: every op is registered, has a valid arity and attributes of its declared type.
- ``types``: each node's recorded type equals its op's inferred type.
- ``params``: ``param`` nodes name existing params; each param satisfies its storage format
  (shapes of codes and scales, code range, N:M pattern).
- ``provenance``: scopes are dotted identifiers, block tags come from ``BLOCK_TAGS``.
- ``symbols``: a symbol bound at run time (``gather_rows``'s ``length``) is fresh: no graph input
  mentions it, and every node that binds it reads the same mask (so they agree by construction).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from llmc.errors import IRError, VerifyError
from llmc.ir.graph import BLOCK_TAGS, Graph, regions_of
from llmc.ir.params import Param, check_param
from llmc.ir.registry import all_ops

Rule = Callable[[Graph], Iterator[str]]
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


def rule_ssa(g: Graph) -> Iterator[str]:
    seen_names: set[str] = set()

    def check(graph: Graph, where: str) -> Iterator[str]:
        defined: set[int] = set()
        for v in graph.inputs:
            if v.name in seen_names:
                yield f"{where}value %{v.name} defined twice"
            seen_names.add(v.name)
            defined.add(id(v))
        for n in graph.nodes:
            for i, v in enumerate(n.inputs):
                if id(v) not in defined:
                    yield (
                        f"{where}%{n.out.name} = {n.op}(...): operand {i} %{v.name} is not "
                        "defined before use in this graph"
                    )
            if n.out.node is not n:
                yield f"{where}value %{n.out.name} is not owned by its node"
            if n.out.name in seen_names:
                yield f"{where}value %{n.out.name} defined twice"
            seen_names.add(n.out.name)
            defined.add(id(n.out))
            for r in regions_of(n):
                yield from check(r, f"{where}region of %{n.out.name}: ")
        for v in graph.outputs:
            if id(v) not in defined:
                yield f"{where}output %{v.name} is not defined"

    yield from check(g, "")


def rule_ops(g: Graph) -> Iterator[str]:
    ops = all_ops()
    for _, n in g.walk():
        if n.op not in ops:
            yield f"%{n.out.name}: unknown op '{n.op}'"
            continue
        od = ops[n.op]
        try:
            od.check_arity(len(n.inputs))
        except IRError as e:
            yield f"%{n.out.name}: {e}"
        if od.attrs is None and n.attrs is not None:
            yield f"%{n.out.name}: op '{n.op}' takes no attributes"
        if od.attrs is not None and not isinstance(n.attrs, od.attrs):
            yield f"%{n.out.name}: attributes must be {od.attrs.__name__}, got {type(n.attrs).__name__}"


def rule_types(g: Graph) -> Iterator[str]:
    ops = all_ops()
    for graph, n in g.walk():
        od = ops.get(n.op)
        if od is None or (od.attrs is not None and not isinstance(n.attrs, od.attrs)):
            continue  # reported by rule_ops
        try:
            want = od.infer([v.type for v in n.inputs], n.attrs, graph)
        except Exception as e:  # a shape rule may trip on malformed input; never raise
            yield f"%{n.out.name} = {n.op}: {e}"
            continue
        if want != n.out.type:
            yield f"%{n.out.name} = {n.op}: recorded type {n.out.type} but inferred {want}"


def rule_params(g: Graph, after: Callable[[Param], None] | None = None) -> Iterator[str]:
    for _, n in g.walk():
        name = getattr(n.attrs, "name", None) if n.op == "param" else None
        if isinstance(name, str) and name not in g.params:
            yield f"%{n.out.name}: param @{name} does not exist"
    for p in g.params.values():
        yield from check_param(p)
        if after is not None:
            after(p)


def rule_provenance(g: Graph) -> Iterator[str]:
    for _, n in g.walk():
        if n.scope and not _SCOPE_RE.match(n.scope):
            yield f"%{n.out.name}: invalid scope {n.scope!r} (dotted identifiers expected)"
        if n.block not in BLOCK_TAGS:
            yield f"%{n.out.name}: unknown block tag {n.block!r} (known: {sorted(BLOCK_TAGS)})"


def rule_symbols(g: Graph) -> Iterator[str]:
    from llmc.ir.ops_adaptive import fresh_symbols

    given: set[str] = set()
    for v in g.inputs:
        given |= v.type.symbols()
    bound: dict[str, tuple[str, int]] = {}  # symbol -> (first binder, id of its mask)
    for _, n in g.walk():
        for s in fresh_symbols(n.op, n.attrs):
            mask = id(n.inputs[-1]) if n.inputs else 0
            if s in given:
                yield f"%{n.out.name} = {n.op}: symbol {s} is bound by a graph input, not fresh"
            elif s in bound and bound[s][1] != mask:
                yield (
                    f"%{n.out.name} = {n.op}: symbol {s} is already bound by %{bound[s][0]} "
                    "from another mask"
                )
            bound.setdefault(s, (n.out.name, mask))


RULES: dict[str, Rule] = {
    "ssa": rule_ssa,
    "ops": rule_ops,
    "types": rule_types,
    "params": rule_params,
    "provenance": rule_provenance,
    "symbols": rule_symbols,
}


def check(
    g: Graph,
    rules: dict[str, Rule] | None = None,
    *,
    after_param: Callable[[Param], None] | None = None,
) -> list[str]:
    """All findings as ``[rule] message`` strings (empty when the graph is valid).
    ``after_param(p)`` is called once the ``params`` rule has checked ``p`` (which reads every
    quantized code: a compile lets go of the pages it read, one param at a time)."""
    out = []
    for name, rule in (rules or RULES).items():
        msgs = rule_params(g, after_param) if rule is rule_params else rule(g)
        out.extend(f"[{name}] {msg}" for msg in msgs)
    return out


def verify(g: Graph, context: str = "") -> None:
    """Raise :class:`VerifyError` listing every broken invariant."""
    errors = check(g)
    if errors:
        raise VerifyError(errors, context)
