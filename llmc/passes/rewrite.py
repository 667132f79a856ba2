"""Pattern-rewrite helpers: rule tables, and patterns given as two plain functions.

**Rule tables** (local rewrites as data). A :class:`Rule` names the ops it looks at and a function
``fn(node, rw) -> Value | None``; returning a value replaces every use of ``node``'s result with it
(the value must have the node's type). ``rw`` (a :class:`Rewriter`) emits new nodes just before
``node``, with its scope and block, and answers small questions (``rw.constant_of(v)``).
:func:`apply_rules` runs a table to a fixed point::

    RULES = [
        Rule(("mul",), lambda n, rw: n.inputs[0] if rw.is_const(n.inputs[1], 1.0) and
             n.inputs[0].type == n.type else None),          # x*1 -> x
    ]
    apply_rules(graph, RULES)

**Patterns by example.** :func:`replace_pattern` takes a *pattern* function and a *replacement*
function over a builder; both receive the same placeholders. Every match of the pattern's result
(an op tree whose leaves are the placeholders, with consistent bindings) is replaced by what the
replacement function emits::

    def pattern(p, x):
        return p.emit("neg", p.emit("neg", x))          # neg(neg(x))

    def replacement(b, x):
        return x                                         # -> x

    replace_pattern(graph, pattern, replacement)

Attributes given to ``p.emit`` must match (the node's other attributes are free); ``where`` maps a
placeholder name to a predicate ``(graph, value) -> bool`` (e.g. :func:`is_param`).
Intermediate results of a match that are still used elsewhere stay in place; run ``dce`` after.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmc.errors import PassError
from llmc.ir.graph import Graph, Node, Value
from llmc.ir.registry import get_op

# ----------------------------------------------------------------------------------------------
# rule tables


class Rewriter:
    """Emits nodes before an anchor node (inheriting its scope and block)."""

    def __init__(self, graph: Graph, anchor: Node) -> None:
        self.graph = graph
        self.anchor = anchor

    def emit(self, op: str, *inputs: Value, attrs: Any = None, name: str = "", **kw: Any) -> Value:
        if kw:
            attrs = dict(attrs or {}, **kw)
        node = self.graph.make_node(
            op, inputs, attrs, name=name, scope=self.anchor.scope, block=self.anchor.block
        )
        self.graph.insert_before(self.anchor, node)
        return node.out

    def constant(self, value: float, dtype: str = "f32") -> Value:
        return self.emit("constant", attrs={"value": float(value), "dtype": dtype})

    @staticmethod
    def constant_of(v: Value) -> float | None:
        """The scalar a value holds if it is a ``constant`` node, else None."""
        if v.node is not None and v.node.op == "constant":
            return float(v.node.attrs.value)
        return None

    @classmethod
    def is_const(cls, v: Value, value: float) -> bool:
        c = cls.constant_of(v)
        return c is not None and c == value


RuleFn = Callable[[Node, Rewriter], "Value | None"]


@dataclass(frozen=True)
class Rule:
    """``fn`` is tried on every node whose op is in ``ops`` (empty: every node)."""

    ops: tuple[str, ...]
    fn: RuleFn
    doc: str = ""


def apply_rules(graph: Graph, rules: Sequence[Rule], *, max_rounds: int = 20) -> int:
    """Apply ``rules`` until nothing changes; returns the number of rewrites (dead nodes stay:
    run DCE afterwards)."""
    by_op: dict[str, list[Rule]] = {}
    generic: list[Rule] = []
    for r in rules:
        if r.ops:
            for op in r.ops:
                by_op.setdefault(op, []).append(r)
        else:
            generic.append(r)
    total = 0
    for _ in range(max_rounds):
        changed = 0
        for node in list(graph.nodes):
            if node not in graph.nodes:  # removed by an earlier rewrite this round
                continue
            for rule in by_op.get(node.op, []) + generic:
                new = rule.fn(node, Rewriter(graph, node))
                if new is None or new is node.out:
                    continue
                if new.type != node.out.type:
                    raise PassError(
                        f"rewrite rule {rule.doc or rule.fn.__name__} replaced %{node.out.name} "
                        f"({node.out.type}) with a value of type {new.type}"
                    )
                graph.replace_uses(node.out, new)
                if not get_op(node.op).has_side_effects:
                    graph.remove(node)  # every use now reads `new`
                changed += 1
                break
        total += changed
        if not changed:
            break
    return total


# ----------------------------------------------------------------------------------------------
# patterns by example


@dataclass(eq=False)
class PatternValue:
    """A value in a pattern: a placeholder (``op`` None) or an op applied to pattern values."""

    name: str
    op: str | None = None
    inputs: tuple[PatternValue, ...] = ()
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


class PatternBuilder:
    """What a pattern function receives: ``p.emit(op, *inputs, **attrs)``."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, op: str, *inputs: PatternValue, **attrs: Any) -> PatternValue:
        get_op(op)  # unknown ops fail when the pattern is built, not silently never match
        self.count += 1
        return PatternValue(f"{op}_{self.count}", op, tuple(inputs), attrs)

    def constant(self, value: float) -> PatternValue:
        return self.emit("constant", value=float(value))


def is_param(graph: Graph, v: Value) -> bool:
    return v.node is not None and v.node.op == "param"


def is_constant(graph: Graph, v: Value) -> bool:
    return v.node is not None and v.node.op == "constant"


@dataclass
class Match:
    root: Node
    bindings: dict[str, Value]
    nodes: list[Node]


def _attrs_match(node: Node, want: dict[str, Any]) -> bool:
    for k, v in want.items():
        if node.attrs is None or not hasattr(node.attrs, k):
            return False
        have = getattr(node.attrs, k)
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(have, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if have != v:
            return False
    return True


def _match(
    graph: Graph,
    pv: PatternValue,
    v: Value,
    binds: dict[str, Value],
    nodes: list[Node],
    where: dict[str, Callable[[Graph, Value], bool]],
) -> bool:
    if pv.op is None:
        if pv.name in binds:
            return binds[pv.name] is v
        pred = where.get(pv.name)
        if pred is not None and not pred(graph, v):
            return False
        binds[pv.name] = v
        return True
    n = v.node
    if n is None or n.op != pv.op or len(n.inputs) != len(pv.inputs):
        return False
    if not _attrs_match(n, pv.attrs):
        return False
    nodes.append(n)
    return all(_match(graph, p, x, binds, nodes, where) for p, x in zip(pv.inputs, n.inputs))


def find_matches(
    graph: Graph,
    pattern: Callable[..., PatternValue],
    *,
    where: dict[str, Callable[[Graph, Value], bool]] | None = None,
) -> list[Match]:
    """Every (non-overlapping at the root) match of ``pattern`` in ``graph``'s top level."""
    names = _placeholder_names(pattern)
    pb = PatternBuilder()
    root = pattern(pb, *(PatternValue(n) for n in names))
    if not isinstance(root, PatternValue) or root.op is None:
        raise PassError("a pattern function must return an op applied to its placeholders")
    out = []
    for n in graph.nodes:
        binds: dict[str, Value] = {}
        nodes: list[Node] = []
        if _match(graph, root, n.out, binds, nodes, where or {}):
            out.append(Match(n, binds, nodes))
    return out


def replace_pattern(
    graph: Graph,
    pattern: Callable[..., PatternValue],
    replacement: Callable[..., Value],
    *,
    where: dict[str, Callable[[Graph, Value], bool]] | None = None,
) -> int:
    """Replace every match of ``pattern`` by ``replacement`` (see the module docstring);
    returns the number of replacements."""
    names = _placeholder_names(pattern)
    if _placeholder_names(replacement) != names:
        raise PassError(
            f"pattern and replacement must take the same placeholders, got {names} and "
            f"{_placeholder_names(replacement)}"
        )
    count = 0
    for m in find_matches(graph, pattern, where=where):
        if m.root not in graph.nodes:
            continue
        rw = Rewriter(graph, m.root)
        new = replacement(rw, *(m.bindings[n] for n in names))
        if not isinstance(new, Value):
            raise PassError("a replacement function must return a Value")
        if new.type != m.root.out.type:
            raise PassError(
                f"replacement for %{m.root.out.name} has type {new.type}, expected "
                f"{m.root.out.type}"
            )
        graph.replace_uses(m.root.out, new)
        count += 1
    return count


def _placeholder_names(fn: Callable[..., Any]) -> list[str]:
    params = list(inspect.signature(fn).parameters)
    return params[1:]


def users_of(graph: Graph, v: Value) -> list[Node]:
    return [n for n in graph.nodes if any(x is v for x in n.inputs)]


def retype(graph: Graph, nodes: Iterable[Node] | None = None) -> int:
    """Re-infer the recorded types of ``nodes`` (default: all top-level nodes, in order) after a
    pass changed a param's shape; returns how many changed."""
    changed = 0
    for n in list(nodes) if nodes is not None else graph.nodes:
        want = get_op(n.op).infer([v.type for v in n.inputs], n.attrs, graph)
        if want != n.out.type:
            n.out.type = want
            changed += 1
    return changed
