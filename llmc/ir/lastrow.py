"""The last-row variant of an LM graph: logits for the last row only, for generation's prefill.

Generation samples the first new token from the logits of the last prompt position; every other
row of a prefill's ``logits [batch, rows, vocab]`` is thrown away, yet computing them is the
largest matrix product of the prefill (GPT-2 small, 512 tokens: ``512 x 768 x 50257``).
:func:`last_row_graph` returns the graph with the hidden state sliced to its last row before the
*head* (the row-wise nodes after the last decoder layer that only the logits need: final norm,
``lm_head``, a logit soft-cap or scale), so its logits are ``[batch, 1, vocab]`` and equal the
last row of the original's. The decoder layers, the KV cache outputs and ``ffn_skipped`` are
untouched. Perplexity evaluation needs every row and keeps the original graph.

With token pruning the head runs on the rows the last layer kept; the last prompt position is
never pruned (``keep_rows`` always keeps the ``recent >= 1`` last rows, in order), so the last
row is still the last prompt token.

**The variant shares everything but the head with the original** (the same input ``Value``s, the
same ``Node`` objects, the same params dict): a backend keyed by node identity (outlined layers,
the in-place cache) lowers it with what it planned for the original. Treat it as read-only; a
pass that edits one must not expect the other to follow.

Example::

    g1 = last_row_graph(graph)          # None: not an LM graph, or no row-wise head found
    logits, *present = run(g1, args)    # logits [batch, 1, vocab]
"""

from __future__ import annotations

import itertools

from llmc.errors import IRError
from llmc.ir.graph import Graph, Node, Value
from llmc.ir.ops import SliceAttrs
from llmc.ir.registry import get_op
from llmc.ir.structure import Structure, is_lm
from llmc.ir.types import TensorType

#: Op groups whose every op maps row ``r`` of its operands to row ``r`` of its result.
ROWWISE_GROUPS = frozenset({"UNARY", "BINARY", "FUSED"})
#: Single ops that do (``softmax`` only over the last axis: checked on its attribute).
ROWWISE_OPS = frozenset(
    {"linear", "qlinear_a8", "matmul", "rms_norm", "layer_norm", "cast", "softmax"}
)

#: ``graph.meta`` key the variant carries: ``"last"``.
LOGITS_ROWS_KEY = "logits_rows"


def _rowwise(n: Node) -> bool:
    if n.op == "softmax":
        return n.attrs.dim in (-1, n.out.type.rank - 1)
    return n.op in ROWWISE_OPS or get_op(n.op).group in ROWWISE_GROUPS


def head_nodes(graph: Graph) -> tuple[Value, list[Node]] | None:
    """``(cut, nodes)``: the head of an LM graph (see the module docstring) in graph order, and
    the one hidden-state value ``[batch, rows, ...]`` it reads from the layers; ``None`` when the
    graph is not an LM graph or its logits are not reached from one value by row-wise nodes."""
    if not is_lm(graph) or not graph.outputs:
        return None
    logits = graph.outputs[0]
    if logits.node is None or logits.type.rank != 3:
        return None
    rows = logits.type.shape[1]
    structure = Structure(graph)
    # values that depend on a graph input (the rest come from params and constants alone)
    live = {id(v) for v in graph.inputs}
    for n in graph.nodes:
        if any(id(v) in live for v in n.inputs):
            live.add(id(n.out))
    users = graph.users()
    other_outputs = {id(v) for v in graph.outputs[1:]}

    def candidate(v: Value) -> bool:
        n = v.node
        return (
            n is not None
            and id(v) in live
            and structure.layer(n) is None
            and _rowwise(n)
            and v.type.rank >= 2
            and v.type.shape[1] == rows
            and id(v) not in other_outputs
        )

    if not candidate(logits):
        return None
    tail: dict[int, Node] = {}
    stack = [logits]
    while stack:
        v = stack.pop()
        if id(v.node) in tail or not candidate(v):
            continue
        tail[id(v.node)] = v.node
        stack += [x for x in v.node.inputs if id(x) in live]
    # a value someone outside the head reads stays outside (it becomes a cut)
    changed = True
    while changed:
        changed = False
        for key, n in list(tail.items()):
            if n.out is not logits and any(id(u) not in tail for u in users.get(n.out, [])):
                del tail[key]
                changed = True
    nodes = [n for n in graph.nodes if id(n) in tail]
    if logits.node not in nodes:
        return None
    cuts = {id(x): x for n in nodes for x in n.inputs if id(x) in live and id(x.node) not in tail}
    if len(cuts) != 1:
        return None
    (cut,) = cuts.values()
    if cut.type.rank < 2 or cut.type.shape[1] != rows:
        return None
    return cut, nodes


def last_row_graph(graph: Graph) -> Graph | None:
    """The last-row variant of ``graph`` (see the module docstring), or ``None`` when
    :func:`head_nodes` finds no head to slice (the caller then slices the full logits)."""
    if graph.meta.get(LOGITS_ROWS_KEY) == "last":
        return graph
    found = head_nodes(graph)
    if found is None:
        return None
    cut, head = found
    names = set(graph.root()._names)
    counter = itertools.count()

    def fresh(hint: str) -> str:
        while True:
            name = f"{hint}_last{next(counter) or ''}"
            if name not in names:
                names.add(name)
                return name

    anchor = head[0]
    slice_out = Value(fresh(cut.name), _one_row(cut))
    sliced = Node(
        "slice",
        (cut,),
        SliceAttrs(dim=1, start=-1),
        slice_out,
        anchor.scope,
        anchor.block,
    )
    new: dict[int, Value] = {id(cut): slice_out}
    made: list[Node] = [sliced]
    for n in head:
        ins = tuple(new.get(id(v), v) for v in n.inputs)
        try:
            t = get_op(n.op).infer([v.type for v in ins], n.attrs, graph)
        except IRError:
            return None
        if t != _one_row(n.out):
            return None
        name = n.out.name if n.out is graph.outputs[0] else fresh(n.out.name)
        m = Node(n.op, ins, n.attrs, Value(name, t), n.scope, n.block)
        new[id(n.out)] = m.out
        made.append(m)
    head_ids = {id(n) for n in head}
    last = head[-1]
    nodes: list[Node] = []
    for n in graph.nodes:
        if n is last:
            nodes += made
        elif id(n) not in head_ids:
            nodes.append(n)
    out = Graph(graph.name)
    out.inputs = list(graph.inputs)
    out.nodes = nodes
    out.outputs = [new[id(graph.outputs[0])], *graph.outputs[1:]]
    out.params = graph.params
    out.meta = {**graph.meta, LOGITS_ROWS_KEY: "last"}
    out.pipeline = graph.pipeline
    out._names = names
    return out


def _one_row(v: Value) -> TensorType:
    shape = list(v.type.shape)
    shape[1] = 1
    return v.type.with_shape(tuple(shape))


__all__ = ["LOGITS_ROWS_KEY", "head_nodes", "last_row_graph"]
