"""Layer structure and the LM ABI: the one place that knows which decoder layer and block a node is
in, and what a language-model graph's inputs and outputs are.

**Layers.** A node's ``scope`` is its module path. A decoder layer is a scope of the form
``PREFIX.N`` where ``PREFIX`` is the module path of the layer list. Every frontend family's naming:

=============================  ==========================
family                         ``PREFIX``
=============================  ==========================
Llama, Mistral, Qwen2, tiny    ``model.layers``
OPT                            ``model.decoder.layers``
GPT-2                          ``transformer.h``
GPT-NeoX                       ``gpt_neox.layers``
hand-built graphs (tests)      ``model.layers`` (any ``layers``/``h``/``blocks``/``layer``)
=============================  ==========================

A graph that records ``meta["layer_prefix"]`` (the frontend always does) is read with that prefix
exactly; otherwise the prefix is inferred from the first scope whose path has a layer-list
component (``layers``, ``h``, ``blocks``, ``layer``) followed by an index.

A node's *block* is its ``block`` tag (``attn``, ``ffn``, ``norm``, ...; see
:data:`llmc.ir.graph.BLOCK_TAGS`), which the frontend sets from the module path with
:func:`block_tag` (:data:`COMPONENT_TAGS`: ``mlp``/``fc1`` -> ``ffn``, ``self_attn``/``attn`` ->
``attn``, ...). Glue the frontend leaves unscoped (a residual ``add``) belongs to the
layer of the nearest scoped node before it (:meth:`Structure.layer`).

**The LM ABI** (docs/frontend.md, "The LM ABI"). :func:`check_lm_abi` validates a graph and
returns an :class:`LMAbi` describing it: inputs ``input_ids``, ``positions``, then
``past_k_{i}``/``past_v_{i}`` per layer; outputs ``logits`` then ``present_k_{i}``/``present_v_{i}``.
Each layer's cache has its own length dim (``past_l``). ``llmc-lm-v1`` graphs share one symbol
``past`` for every layer; ``llmc-lm-v2`` graphs (token pruning) may give each layer its own
(``past_{i}``), and a layer's presents are ``past_l + rows_l`` long, where ``rows_l`` is ``seq``
or the fresh symbol of the last ``gather_rows`` before the layer.

Example::

    s = Structure(graph)
    s.layer(node)                 # 3, or None outside every layer
    s.blocks(3, "ffn")            # the FFN nodes of layer 3, in graph order
    abi = check_lm_abi(graph)     # LMAbi(num_layers=..., past=(past, past, ...), ...)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmc.errors import LlmcError
from llmc.ir.graph import Graph, Node, regions_of
from llmc.ir.types import Dim, SymDim, TensorType, dim_sub

#: Module-path components that hold a list of decoder layers, in every supported family.
LAYER_LISTS = ("layers", "h", "blocks", "layer")
_ANY_LAYER = re.compile(r"(?:^|\.)(?:" + "|".join(LAYER_LISTS) + r")\.(\d+)(?=\.|$)")

#: LM ABI versions: v1 has one cache length for every layer, v2 one per layer.
LM_ABI_V1 = "llmc-lm-v1"
LM_ABI_V2 = "llmc-lm-v2"
LM_ABIS = (LM_ABI_V1, LM_ABI_V2)
_PER_LAYER_PAST = re.compile(r"past_\d+")

#: Optional scalar inputs after the KV inputs, in this order; a runner supplies each one a graph
#: declares. ``decode_start: i64[]`` is the position of the first generated token (the prompt
#: length): adaptive graphs (``ffn-skip``) never skip for rows at earlier positions (the prompt).
#: A caller that does not know it passes :data:`NO_DECODE` (every row counts as prompt: dense).
LM_OPTIONAL_INPUTS = ("decode_start",)
NO_DECODE = 2**62
#: Optional outputs after the present KV outputs, in this order (the output value's name).
#: ``ffn_skipped: bool[batch, seq, num_layers]`` is, per row and layer, whether the row's FFN block
#: did not run (``ffn-skip``); runners count decode rows' skips from it (``ffn_skip_fraction``) on
#: every backend, the interpreter included.
LM_OPTIONAL_OUTPUTS = ("ffn_skipped",)


def split_layer(scope: str, prefix: str | None = None) -> tuple[str, int, str] | None:
    """``(prefix, index, rest)`` of a scope inside a decoder layer, else ``None``.

    With ``prefix`` the scope must start with ``prefix.N``; without, any layer-list component
    matches (the first one: ``transformer.h.3.mlp`` -> ``("transformer.h", 3, "mlp")``).
    """
    if prefix:
        head = prefix + "."
        if not scope.startswith(head):
            return None
        idx, _, rest = scope[len(head) :].partition(".")
        return (prefix, int(idx), rest) if idx.isdigit() else None
    m = _ANY_LAYER.search(scope)
    if m is None:
        return None
    pre = scope[: m.start(1) - 1]
    return pre, int(m.group(1)), scope[m.end(1) + 1 :]


def layer_of(scope: str, prefix: str | None = None) -> int | None:
    """The decoder layer index named by ``scope`` (see :func:`split_layer`), else ``None``."""
    got = split_layer(scope, prefix)
    return got[1] if got else None


def layer_scope(prefix: str, index: int) -> str:
    """The scope of layer ``index``: ``model.layers.3``."""
    return f"{prefix}.{index}"


def rename_layer(scope: str, prefix: str, src: int, dst: int) -> str:
    """``scope`` (or a param name) moved from layer ``src`` to layer ``dst``; other text unchanged."""
    head = layer_scope(prefix, src)
    if scope == head or scope.startswith(head + "."):
        return layer_scope(prefix, dst) + scope[len(head) :]
    return scope


def layer_prefix(graph: Graph) -> str | None:
    """The module path of ``graph``'s layer list: ``meta["layer_prefix"]`` when recorded, else
    inferred from the first scope inside a layer; ``None`` when no node is in a layer."""
    pre = graph.root().meta.get("layer_prefix")
    if isinstance(pre, str) and pre:
        return pre
    for _, n in graph.root().walk():
        got = split_layer(n.scope)
        if got is not None:
            return got[0]
    return None


def layer_label(tag: str) -> str | None:
    """``"layer N"`` for a scope-like tag inside a decoder layer (reports group by it)."""
    i = layer_of(tag)
    return None if i is None else f"layer {i}"


#: Module-path components that decide a node's block tag (innermost match wins), in every
#: family's naming; :data:`OP_TAGS` override (norm ops are "norm", rope "rope", lookups "embed").
COMPONENT_TAGS: dict[str, str] = {
    "embed_tokens": "embed",
    "wte": "embed",
    "wpe": "embed",
    "embed_in": "embed",
    "embed_positions": "embed",
    "project_in": "embed",
    "self_attn": "attn",
    "attn": "attn",
    "attention": "attn",
    "self_attention": "attn",
    "mlp": "ffn",
    "fc1": "ffn",
    "fc2": "ffn",
    "activation_fn": "ffn",
    "lm_head": "head",
    "embed_out": "head",
    "project_out": "head",
}
OP_TAGS = {"rms_norm": "norm", "layer_norm": "norm", "rope": "rope", "embedding": "embed"}


def block_tag(op: str, scope: str, tags: Mapping[str, str] = COMPONENT_TAGS) -> str:
    """The block tag the frontend gives a node of ``op`` at ``scope`` (``mlp`` -> ``ffn``)."""
    if op in OP_TAGS:
        return OP_TAGS[op]
    for part in reversed(scope.split(".")):
        if part in tags:
            return tags[part]
    return ""


class Structure:
    """Which layer and block each top-level node of ``graph`` is in.

    ``layer(n)`` is the layer named by the node's scope; an unscoped, non-param node (a residual
    ``add`` the frontend left unscoped) belongs to the layer of the nearest scoped node before it.
    Region nodes answer by their own scope. Built once per graph; rebuild after editing the graph.
    """

    def __init__(self, graph: Graph, prefix: str | None = None) -> None:
        self.graph = graph
        self.prefix = prefix if prefix is not None else layer_prefix(graph)
        self._of: dict[int, int] = {}
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        current: int | None = None  # layer of the nearest scoped node so far
        for pos, n in enumerate(graph.nodes):
            if n.op == "param":
                i = self.scope_layer(n.scope)
            elif n.scope:
                i = current = self.scope_layer(n.scope)
            else:
                i = current  # glue: the layer it follows
            if i is None:
                continue
            self._of[id(n)] = i
            if n.op != "param" and n.scope:
                first.setdefault(i, pos)
                last[i] = pos
        #: layer -> (first, last) position of its scoped non-param nodes in ``graph.nodes``
        self.spans = {i: (first[i], last[i]) for i in sorted(first)}

    def scope_layer(self, scope: str) -> int | None:
        """The layer named by ``scope`` (this graph's prefix)."""
        return layer_of(scope, self.prefix) if self.prefix else None

    def layer(self, n: Node) -> int | None:
        """The layer ``n`` belongs to, or ``None`` (embedding, final norm, head, ...)."""
        got = self._of.get(id(n))
        return got if got is not None else self.scope_layer(n.scope)

    @staticmethod
    def block(n: Node) -> str:
        """The node's block tag (``attn``, ``ffn``, ``norm``, ``""`` for glue)."""
        return n.block

    @property
    def layers(self) -> list[int]:
        """Indices of the layers that have nodes, ascending."""
        return list(self.spans)

    def nodes(self, layer: int, *, regions: bool = False) -> list[Node]:
        """Top-level nodes of ``layer`` (params included), in graph order; with ``regions``, each
        followed by the nodes of its regions (a ``cond`` holding a skippable FFN block)."""
        out: list[Node] = []
        for n in self.graph.nodes:
            if self.layer(n) == layer:
                out.append(n)
                if regions:
                    out.extend(_region_nodes(n))
        return out

    def blocks(self, layer: int, tag: str, *, regions: bool = False) -> list[Node]:
        """Nodes of ``layer`` tagged ``tag``, in graph order (see :meth:`nodes`)."""
        return [n for n in self.nodes(layer, regions=regions) if n.block == tag]

    def interleaved(self, layer: int) -> bool:
        """Whether ``layer``'s span holds a node scoped to another layer."""
        a, b = self.spans[layer]
        return any(
            (j := self.scope_layer(n.scope)) is not None and j != layer
            for n in self.graph.nodes[a : b + 1]
        )

    def contiguous(self) -> bool:
        """Whether each layer's scoped nodes form one run in the node list (layers in order)."""
        seen: list[int] = []
        for n in self.graph.nodes:
            i = self.scope_layer(n.scope)
            if i is None or (seen and seen[-1] == i):
                continue
            if i in seen:
                return False
            seen.append(i)
        return True

    def segments(self) -> list[tuple[str, list[Node]]]:
        """The top-level nodes split where a new layer's first scoped node appears:
        ``[("pre", [...]), ("layers.0", [...]), ...]`` (labels are ``layers.N`` in every family)."""
        segs: list[tuple[str, list[Node]]] = []
        cur: list[Node] = []
        label = "pre"
        seen: set[int] = set()
        for n in self.graph.nodes:
            i = self.scope_layer(n.scope)
            if i is not None and i not in seen:
                seen.add(i)
                if cur:
                    segs.append((label, cur))
                cur, label = [], f"layers.{i}"
            cur.append(n)
        if cur:
            segs.append((label, cur))
        return segs


def _region_nodes(n: Node) -> list[Node]:
    out: list[Node] = []
    for r in regions_of(n):
        for m in r.nodes:
            out.append(m)
            out.extend(_region_nodes(m))
    return out


# ----------------------------------------------------------------------------------------------
# the LM ABI


class LMAbiError(LlmcError):
    """A graph does not follow the LM ABI (docs/frontend.md, "The LM ABI")."""


@dataclass(frozen=True)
class LMAbi:
    """What :func:`check_lm_abi` found: layer count, each layer's cache length dim, version."""

    version: str
    num_layers: int
    past: tuple[Dim, ...]  # per layer: the cache length dim of past_k_i / past_v_i
    #: per layer: the rows it runs on (``seq``, or a ``gather_rows`` length): present - past
    rows: tuple[Dim | None, ...] = ()
    #: optional inputs the graph declares after the KV inputs (:data:`LM_OPTIONAL_INPUTS`)
    extra: tuple[str, ...] = ()
    #: optional outputs after the present KV outputs (:data:`LM_OPTIONAL_OUTPUTS`)
    extra_outputs: tuple[str, ...] = ()

    @property
    def takes_decode_start(self) -> bool:
        return "decode_start" in self.extra

    @property
    def skip_output(self) -> int | None:
        """Index of the ``ffn_skipped`` output, if the graph has one."""
        if "ffn_skipped" not in self.extra_outputs:
            return None
        return 1 + 2 * self.num_layers + self.extra_outputs.index("ffn_skipped")

    @property
    def uniform(self) -> bool:
        """One cache length for every layer (``llmc-lm-v1``)."""
        return len(set(self.past)) <= 1


def is_lm(graph: Graph) -> bool:
    """Whether ``graph`` takes ``input_ids, positions, ...`` (the LM ABI's first inputs)."""
    return [v.name for v in graph.inputs][:2] == ["input_ids", "positions"]


def kv_input_names(num_layers: int) -> list[str]:
    return [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("k", "v")]


def check_lm_abi(graph: Graph) -> LMAbi:
    """Validate ``graph`` against the LM ABI; returns its :class:`LMAbi` or raises one
    :class:`LMAbiError` line naming what is wrong."""
    names = [v.name for v in graph.inputs]
    meta = graph.meta
    if not is_lm(graph) or "num_layers" not in meta:
        raise LMAbiError(
            f"graph @{graph.name} does not follow the LM ABI {LM_ABI_V1} (inputs input_ids, "
            f"positions, past_k_i, past_v_i; meta num_layers): got inputs {names[:4]}"
        )
    version = meta.get("abi", LM_ABI_V1)
    if version not in LM_ABIS:
        raise LMAbiError(
            f"graph @{graph.name}: unknown LM ABI {version!r} (this llmc reads {', '.join(LM_ABIS)})"
        )
    n = int(meta["num_layers"])
    extra = tuple(names[2 + 2 * n :])
    if not set(extra) <= set(LM_OPTIONAL_INPUTS):
        extra = ()  # not optional inputs: the count check below names the problem
    elif list(extra) != [x for x in LM_OPTIONAL_INPUTS if x in extra] or any(
        graph.inputs[names.index(x)].type != TensorType((), "i64") for x in extra
    ):
        raise LMAbiError(
            f"graph @{graph.name}: inputs after the KV cache must be i64[] scalars among "
            f"{', '.join(LM_OPTIONAL_INPUTS)}, in that order; got {', '.join(extra)}"
        )
    extra_out = tuple(v.name for v in graph.outputs[1 + 2 * n :])
    if not set(extra_out) <= set(LM_OPTIONAL_OUTPUTS):
        extra_out = ()  # not optional outputs: the count check below names the problem
    if len(graph.inputs) != 2 + 2 * n + len(extra) or len(graph.outputs) != 1 + 2 * n + len(
        extra_out
    ):
        raise LMAbiError(
            f"graph @{graph.name}: {n} layers need {2 + 2 * n} inputs and {1 + 2 * n} outputs, "
            f"got {len(graph.inputs)} and {len(graph.outputs)}"
        )
    if list(extra_out) != [x for x in LM_OPTIONAL_OUTPUTS if x in extra_out]:
        raise LMAbiError(
            f"graph @{graph.name}: outputs after the KV cache must be among "
            f"{', '.join(LM_OPTIONAL_OUTPUTS)}, in that order; got {', '.join(extra_out)}"
        )
    if "ffn_skipped" in extra_out:
        t = graph.outputs[1 + 2 * n + extra_out.index("ffn_skipped")].type
        if t.dtype != "bool" or t.rank != 3 or t.shape[2] != n:
            raise LMAbiError(
                f"graph @{graph.name}: output ffn_skipped must be bool[batch, seq, {n}], got {t}"
            )
    want = kv_input_names(n)
    if names[2 : 2 + 2 * n] != want:
        bad = next(
            i for i, (a, b) in enumerate(zip(names[2 : 2 + 2 * n], want, strict=True)) if a != b
        )
        raise LMAbiError(
            f"graph @{graph.name}: input {2 + bad} is %{names[2 + bad]}, expected %{want[bad]}"
        )
    past: list[Dim] = []
    for i in range(n):
        k, v = graph.inputs[2 + 2 * i].type, graph.inputs[3 + 2 * i].type
        if k.rank != 4 or v.rank != 4 or k.shape[2] != v.shape[2]:
            raise LMAbiError(
                f"graph @{graph.name}: past_k_{i} {k} and past_v_{i} {v} must be "
                "[batch, kv_heads, past, head_dim] with one length"
            )
        past.append(k.shape[2])
    rows: list[Dim | None] = []
    for i in range(n):
        t = graph.outputs[1 + 2 * i].type
        r = dim_sub(t.shape[2], past[i]) if t.rank == 4 else None
        rows.append(
            r if r is None or isinstance(r, int) or not (r.symbols & _syms(past[i])) else None
        )
    abi = LMAbi(version, n, tuple(past), tuple(rows), extra, extra_out)
    if version == LM_ABI_V1 and not abi.uniform:
        raise LMAbiError(
            f"graph @{graph.name}: layers have different cache lengths "
            f"({', '.join(sorted({str(d) for d in past}))}); that needs meta abi {LM_ABI_V2!r}"
        )
    return abi


def _syms(d: Dim) -> frozenset[str]:
    return d.symbols if isinstance(d, SymDim) else frozenset()


def check_kv_lengths(abi: LMAbi, lengths: Sequence[int]) -> None:
    """Refuse concrete per-layer cache lengths that ``abi`` cannot take: a wrong layer count, or
    two layers that share a length symbol (every layer under v1) with different lengths."""
    if len(lengths) != abi.num_layers:
        raise LMAbiError(f"the KV cache has {len(lengths)} layers, the model {abi.num_layers}")
    seen: dict[Dim, tuple[int, int]] = {}
    for i, (d, n) in enumerate(zip(abi.past, lengths, strict=True)):
        j, m = seen.setdefault(d, (i, n))
        if m != n:
            raise LMAbiError(
                f"KV cache layers {j} and {i} hold {m} and {n} positions, but the model gives them "
                f"one length ({d}): per-layer lengths need an {LM_ABI_V2} graph"
            )


def complete_env(graph: Graph, env: Mapping[str, int]) -> dict[str, int]:
    """``env`` (over ``batch``, ``seq``, ``past``) extended to ``graph``'s per-layer symbols, for
    static analysis at a chosen size: a layer's cache length ``past_{i}`` defaults to ``past`` and
    a length bound at run time (``gather_rows``) to ``seq``, i.e. nothing pruned (an upper bound).
    Symbols already in ``env`` keep their values."""
    from llmc.ir.ops_adaptive import fresh_symbols

    out = dict(env)
    for v in graph.inputs:
        for s in v.type.symbols():
            if s not in out and _PER_LAYER_PAST.fullmatch(s) and "past" in env:
                out[s] = env["past"]
    for _, n in graph.walk():
        for s in fresh_symbols(n.op, n.attrs):
            if s not in out and "seq" in env:
                out[s] = env["seq"]
    return out
