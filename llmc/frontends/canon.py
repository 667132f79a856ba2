"""IR rewrites the frontend applies after conversion.

- :func:`fold_flat_linear`: ``reshape([..., in] -> [N, in]) -> linear -> reshape([N, out] ->
  [..., out])`` becomes one ``linear`` on the original rank (GPT-2's ``Conv1D`` flattens).
- :func:`fuse_rms_norm`: ``x * rsqrt(mean(x^2, -1, keepdim) + eps) [* w]`` written out in a module's
  Python (custom modules that Hugging Face patching does not cover) becomes one ``rms_norm``.
- :func:`add_kv_cache`: turns a full-sequence forward into the LM ABI ``llmc-lm-v1`` (see
  docs/frontend.md): per attention ``i`` (in layer order) inputs ``past_k_i``/``past_v_i``
  ``[batch, kv_heads, past, head_dim]``, ``present_k_i = concat(past_k_i, k, dim=2)`` feeding the
  attention, and the presents appended to the outputs after ``logits``. Attention is bottom-right
  causal, so the same graph serves a full forward (``past = 0``), prefill and decode.
- :func:`replicate_layers`: grows an ``n``-layer graph to ``total`` layers by copying the last
  layer's subgraph with renamed scopes and params (architecture-only models: a 7B graph is built
  from a 2-layer export in a second); :func:`truncate_layers` is its inverse (the FPGA
  simulator's layer folding simulates 2-4 layers of a 32-layer model).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from llmc.errors import IRError
from llmc.ir.graph import Graph, Node, Value, regions_of
from llmc.ir.params import Param
from llmc.ir.structure import layer_of, rename_layer
from llmc.ir.types import TensorType, sym


def fold_flat_linear(g: Graph) -> int:
    users = g.users()
    outputs = {id(v) for v in g.outputs}
    folded = 0
    for lin in list(g.nodes):
        if lin.op != "linear":
            continue
        r1 = lin.inputs[0].node
        if r1 is None or r1.op != "reshape" or len(users.get(r1.out, [])) != 1:
            continue
        lin_users = users.get(lin.out, [])
        if len(lin_users) != 1 or lin_users[0].op != "reshape" or id(lin.out) in outputs:
            continue
        r2 = lin_users[0]
        x = r1.inputs[0]
        if x.type.rank < 2 or x.type.shape[:-1] != r2.out.type.shape[:-1]:
            continue
        if r1.out.type.rank != 2:
            continue
        lin.inputs = (x,) + lin.inputs[1:]
        lin.out.type = r2.out.type
        g.replace_uses(r2.out, lin.out)
        g.remove(r2)
        g.remove(r1)
        users = g.users()
        folded += 1
    return folded


def _const(v: Value) -> float | None:
    n = v.node
    return n.attrs.value if n is not None and n.op == "constant" else None


def _square_of(v: Value) -> Value | None:
    n = v.node
    if n is None:
        return None
    if n.op == "pow" and _const(n.inputs[1]) == 2.0:
        return n.inputs[0]
    if n.op == "mul" and n.inputs[0] is n.inputs[1]:
        return n.inputs[0]
    return None


def _other(n: Node, v: Value) -> Value | None:
    if n.inputs[0] is v:
        return n.inputs[1]
    if n.inputs[1] is v:
        return n.inputs[0]
    return None


def fuse_rms_norm(g: Graph) -> int:
    """Fold decomposed RMSNorms into ``rms_norm`` (see the module docstring); returns the count."""
    fused = 0
    users = g.users()
    for r in list(g.nodes):
        if r.op != "rsqrt" or r.inputs[0].node is None or r.inputs[0].node.op != "add":
            continue
        add = r.inputs[0].node
        eps = _const(add.inputs[1]) if _const(add.inputs[1]) is not None else _const(add.inputs[0])
        mean = add.inputs[0] if _const(add.inputs[1]) is not None else add.inputs[1]
        mn = mean.node
        if eps is None or mn is None or mn.op != "reduce_mean" or not mn.attrs.keepdim:
            continue
        x = _square_of(mn.inputs[0])
        if (
            x is None
            or x.type.rank < 1
            or {d % x.type.rank for d in mn.attrs.dims} != {x.type.rank - 1}
        ):
            continue
        scaled = [u for u in users.get(r.out, []) if u.op == "mul" and _other(u, r.out) is x]
        if len(scaled) != 1 or scaled[0].out.type != x.type:
            continue
        out = scaled[0]
        inputs = [x]
        nxt = users.get(out.out, [])
        if len(nxt) == 1 and nxt[0].op == "mul":
            w = _other(nxt[0], out.out)
            if w is not None and w.type.shape == (x.type.shape[-1],) and nxt[0].out.type == x.type:
                out = nxt[0]
                inputs.append(w)
        node = g.make_node("rms_norm", inputs, {"eps": float(eps)}, scope=out.scope, block="norm")
        if node.out.type != out.out.type:
            continue
        g.insert_before(out, node)
        g.replace_uses(out.out, node.out)
        fused += 1
        users = g.users()
    if fused:
        g.dce()
    return fused


def add_kv_cache(g: Graph, layer_prefix: str) -> int:
    """Rewrite in place to the LM ABI; returns the number of layers (attention nodes)."""
    if [v.name for v in g.inputs] != ["input_ids", "positions"]:
        raise IRError(f"add_kv_cache expects inputs input_ids, positions; got {g.inputs}")
    attn = [n for n in g.nodes if n.op == "attention"]
    past = sym("past")
    for i, n in enumerate(attn):
        if layer_of(n.scope, layer_prefix) != i:
            raise IRError(
                f"attention #{i} is at scope {n.scope!r}, not in layer {layer_prefix}.{i}: "
                "layers must run in order with one attention each"
            )
        q, k, v = n.inputs
        presents = []
        for kind, x in (("k", k), ("v", v)):
            t = x.type
            pin = g.add_input(
                f"past_{kind}_{i}", TensorType((t.shape[0], t.shape[1], past, t.shape[3]), t.dtype)
            )
            cat = g.make_node(
                "concat",
                [pin, x],
                {"dim": 2},
                name=f"present_{kind}_{i}",
                scope=n.scope,
                block="attn",
            )
            if cat.out.name != f"present_{kind}_{i}":
                raise IRError(f"value name present_{kind}_{i} is already taken")
            g.insert_before(n, cat)
            presents.append(cat.out)
        n.inputs = (q, presents[0], presents[1])
        g.outputs.extend(presents)
    return len(attn)


def _layer_nodes(g: Graph, prefix: str, i: int) -> list[Node]:
    return [n for n in g.nodes if layer_of(n.scope, prefix) == i]


def replicate_layers(
    g: Graph,
    prefix: str,
    total: int,
    kinds: Sequence[str] | None = None,
    built: Sequence[str] | None = None,
) -> None:
    """Copy the last layer until the graph has ``total`` layers (see the module docstring).

    Needs at least two layers with identical structure, laid out contiguously; new params share
    the source layer's (meta) data tensors, so this is meant for architecture-only graphs.
    ``kinds`` (one per layer of the result, e.g. Gemma's ``layer_types``) and ``built`` (the
    kinds of the layers the graph has) let the layers differ in their ops' attributes (a
    sliding window, a rope base): every layer ``i``, built ones included, takes the attributes
    of the built layer of kind ``kinds[i]``.
    """
    have = 0
    while _layer_nodes(g, prefix, have):
        have += 1
    if have < 2:
        raise IRError(f"replicate_layers needs >= 2 layers under {prefix}, found {have}")
    if total <= have:
        return
    if kinds is not None and len(kinds) != total:
        raise IRError(f"replicate_layers: {len(kinds)} layer kinds for {total} layers")
    src_i = have - 1
    prev = _layer_nodes(g, prefix, src_i - 1)
    src = _layer_nodes(g, prefix, src_i)
    same = len(prev) == len(src) and all(
        a.op == b.op
        and (a.op == "param" or kinds is not None or a.attrs == b.attrs)
        and a.out.type == b.out.type
        for a, b in zip(prev, src, strict=False)
    )
    if not same:
        raise IRError(f"layers {src_i - 1} and {src_i} differ in structure; cannot replicate")
    templates: dict[str, list[Any]] = {}
    if kinds is not None:
        built = list(built if built is not None else kinds[:have])
        if len(built) != have:
            raise IRError(f"replicate_layers: {len(built)} built layer kinds for {have} layers")
        for j in range(have):
            templates[built[j]] = [n.attrs for n in _layer_nodes(g, prefix, j)]
        missing = sorted(set(kinds) - set(templates))
        if missing:
            raise IRError(f"replicate_layers: no built layer of kind {missing[0]!r} to copy")
        for j in range(have):  # the built layers take their own kind's attributes too
            for n, a in zip(_layer_nodes(g, prefix, j), templates[kinds[j]], strict=True):
                if n.op != "param":
                    n.attrs = a
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    first, last = pos[id(src[0])], pos[id(src[-1])]
    if last - first + 1 != len(src):
        raise IRError(f"layer {src_i} is not contiguous in the node list; cannot replicate")
    idx_src = {id(n.out): j for j, n in enumerate(src)}
    idx_prev = {id(n.out): j for j, n in enumerate(prev)}
    cur: list[Value] = [n.out for n in src]  # values of the newest layer
    before: list[Value] = [n.out for n in prev]  # values of the layer before it
    new_nodes: list[Node] = []
    for layer in range(have, total):
        made: list[Value] = []
        like = templates[kinds[layer]] if kinds is not None else [n.attrs for n in src]
        for n, tmpl_attrs in zip(src, like, strict=True):
            ins = []
            for v in n.inputs:
                if id(v) in idx_src:
                    ins.append(made[idx_src[id(v)]])
                elif id(v) in idx_prev:
                    ins.append(cur[idx_prev[id(v)]])
                else:
                    ins.append(v)
            attrs = tmpl_attrs
            if n.op == "param":
                attrs = n.attrs
                pname = rename_layer(attrs.name, prefix, src_i, layer)
                if pname == attrs.name:
                    raise IRError(f"param @{attrs.name} of layer {src_i} has no layer index")
                if pname not in g.params:
                    p = g.params[attrs.name]
                    g.add_param(Param(pname, p.type, p.format, dict(p.data)))
                attrs = type(attrs)(name=pname)
            scope = rename_layer(n.scope, prefix, src_i, layer)
            hint = n.out.name.replace(f"_{src_i}_", f"_{layer}_") if n.op == "param" else ""
            node = g.make_node(
                n.op, ins, attrs, name=hint, scope=scope, block=n.block, type=n.out.type
            )
            new_nodes.append(node)
            made.append(node.out)
        before, cur = cur, made
    g.nodes[last + 1 : last + 1] = new_nodes
    # Everything after the copied layers now reads the last layer's values.
    last_src = {id(v): j for j, v in enumerate(n.out for n in src)}
    tail_start = last + 1 + len(new_nodes)
    for n in g.nodes[tail_start:]:
        n.inputs = tuple(cur[last_src[id(v)]] if id(v) in last_src else v for v in n.inputs)
    g.outputs = [cur[last_src[id(v)]] if id(v) in last_src else v for v in g.outputs]
    del before


def truncate_layers(g: Graph, prefix: str, keep: int) -> Graph:
    """A new graph with only the first ``keep`` layers of ``g``: what followed the last layer now
    reads layer ``keep - 1``'s values, and the cache inputs/outputs of the dropped layers are gone.

    The inverse of :func:`replicate_layers` for graphs whose layers are structurally identical
    (checked against the last layer). Only the kept nodes are copied; params are re-wrapped and
    share their data with ``g`` (as :meth:`Graph.copy` does); ``g`` is not modified.
    """
    have = 0
    while _layer_nodes(g, prefix, have):
        have += 1
    if not 1 <= keep <= have:
        raise IRError(f"truncate_layers: cannot keep {keep} of {have} layers under {prefix}")
    if any(regions_of(n) for n in g.nodes):
        raise IRError("truncate_layers: graphs with regions (cond, fused_elementwise) unsupported")
    last = _layer_nodes(g, prefix, have - 1)
    new_last = _layer_nodes(g, prefix, keep - 1)
    if len(last) != len(new_last) or any(
        a.op != b.op or a.out.type != b.out.type for a, b in zip(last, new_last, strict=True)
    ):
        raise IRError(f"layers {keep - 1} and {have - 1} differ in structure; cannot truncate")
    dropped = {id(n) for i in range(keep, have) for n in _layer_nodes(g, prefix, i)}
    remap = {id(a.out): b.out for a, b in zip(last, new_last, strict=True)}
    kept = [n for n in g.nodes if id(n) not in dropped]
    # A dropped layer's outputs (its caches) go with it; an output of the last layer that no kept
    # output already covers (a hidden state) is rewired like the tail.
    dropped_vals = {id(n.out) for n in g.nodes if id(n) in dropped}
    outs: list[Value] = []
    for v in g.outputs:
        if id(v) in dropped_vals:
            w = remap.get(id(v))
            if w is None or any(w is o for o in g.outputs) or any(w is o for o in outs):
                continue
            v = w
        outs.append(v)
    used = {id(remap.get(id(v), v)) for n in kept for v in n.inputs} | {id(v) for v in outs}

    out = Graph(g.name)
    out.meta = copy.deepcopy(g.meta)
    out.meta["num_layers"] = keep
    vmap: dict[int, Value] = {}
    for v in g.inputs:
        if id(v) in used:
            vmap[id(v)] = out.add_input(v.name, v.type)
    for n in kept:
        ins = tuple(vmap[id(remap.get(id(v), v))] for v in n.inputs)
        out.claim_name(n.out.name)
        node = Node(n.op, ins, n.attrs, Value(n.out.name, n.out.type), n.scope, n.block)
        out.append(node)
        vmap[id(n.out)] = node.out
        if n.op == "param":
            p = g.params[n.attrs.name]
            out.params[p.name] = Param(p.name, p.type, p.format, dict(p.data))
    out.outputs = [vmap[id(v)] for v in outs]
    out.dce()
    out.prune_params()
    return out
