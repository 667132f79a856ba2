"""``llmc inspect``: what a model or an artifact is, without running it.

:func:`inspect_loaded` returns one JSON-ready dict: the model's description (architecture, layers,
widths, vocabulary, dtype, LM ABI), its parameters by layer and by storage format, its op counts, its
tokenizer, and for an artifact the target, the pass pipeline, the versions it was built with and
every file with its size and sha256 (from the manifest, which the loader has already checked).

Example::

    from llmc.compile import load
    info = inspect_loaded(load("tiny"))
    info["params"]["by_layer"][0]   # {'layer': 'embed', 'parameters': 65536, ...}
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llmc.analysis import param_summary
from llmc.ir.graph import Graph
from llmc.ir.structure import layer_of, layer_prefix

#: graph meta keys worth showing, in this order
META_KEYS = (
    "architecture",
    "family",
    "abi",
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "position_embedding",
    "norm",
    "activation",
    "sliding_window",
    "dtype",
    "param_dtype",
    "kv_dtype",
)


def _numel(p: Any) -> int:
    n = 1
    for d in p.type.shape:
        n *= int(d)
    return n


def params_by_layer(graph: Graph) -> list[dict[str, Any]]:
    """Parameters grouped by decoder layer (``embed`` before the first, ``head`` after the last:
    by the param's module path, through :mod:`llmc.ir.structure`)."""
    prefix = layer_prefix(graph)
    groups: dict[Any, dict[str, Any]] = {}
    seen_layer = False
    for name, p in graph.params.items():
        idx = layer_of(name, prefix) if prefix is not None else None
        if idx is not None:
            seen_layer = True
            key: Any = idx
        else:
            key = "head" if seen_layer else "embed"
        g = groups.setdefault(key, {"parameters": 0, "bytes": 0.0, "formats": Counter()})
        g["parameters"] += _numel(p)
        g["bytes"] += p.storage_bytes()
        g["formats"][f"{p.type.dtype} {p.format}" if not p.format.is_dense else p.type.dtype] += 1
    order = ["embed", *sorted(k for k in groups if isinstance(k, int)), "head"]
    return [
        {
            "layer": k,
            "parameters": groups[k]["parameters"],
            "bytes": int(groups[k]["bytes"]),
            "formats": dict(groups[k]["formats"]),
        }
        for k in order
        if k in groups
    ]


def inspect_loaded(loaded: Any) -> dict[str, Any]:
    """The description of a :class:`llmc.compile.Loaded` model or artifact (see module doc)."""
    g: Graph = loaded.graph
    meta = {k: g.meta[k] for k in META_KEYS if k in g.meta}
    tok = loaded.tokenizer
    out: dict[str, Any] = {
        "model": loaded.name,
        "source": loaded.source,
        "kind": "artifact" if loaded.artifact is not None else "model",
        "meta": meta,
        "architecture_only": any(p.is_meta for p in g.params.values()),
        "params": {**param_summary(g), "by_layer": params_by_layer(g)},
        "ops": dict(sorted(Counter(n.op for n in g.nodes).items())),
        "inputs": [{"name": v.name, "type": str(v.type)} for v in g.inputs],
        "outputs": len(g.outputs),
        "tokenizer": None
        if tok is None
        else {"type": type(tok).__name__, "vocab_size": int(tok.vocab_size)},
    }
    if loaded.artifact is not None:
        m = loaded.artifact.manifest
        base = loaded.artifact.path
        out["artifact"] = {
            "path": str(base),
            "target": m.get("target"),
            "target_kind": m.get("target_kind"),
            "pipeline": m.get("pipeline", ""),
            "created": m.get("created"),
            "versions": m.get("versions", {}),
            "files": [
                {"path": rel, "bytes": (base / rel).stat().st_size, "sha256": digest}
                for rel, digest in sorted(m.get("files", {}).items())
            ],
        }
    return out


def render(info: dict[str, Any]) -> str:
    """The text form ``llmc inspect`` prints."""
    p = info["params"]
    lines = [f"model      {info['model']} ({info['kind']}, from {info['source']})"]
    for k, v in info["meta"].items():
        lines.append(f"  {k:24s} {v}")
    tok = info["tokenizer"]
    lines.append(
        "tokenizer  "
        + (f"{tok['type']} ({tok['vocab_size']} ids)" if tok else "none (token ids only)")
    )
    lines.append(
        f"params     {p['parameters']:,} ({p['storage_bytes'] / 1e6:.2f} MB stored; "
        f"{p['quantized_parameters']:,} quantized, {p['sparse_parameters']:,} sparse)"
        + ("; architecture only (no weights)" if info["architecture_only"] else "")
    )
    lines.append(f"  {'layer':>6s} {'parameters':>14s} {'MB':>10s}  formats")
    for row in p["by_layer"]:
        fmts = ", ".join(f"{n} x {f}" for f, n in row["formats"].items())
        lines.append(
            f"  {row['layer']!s:>6s} {row['parameters']:>14,} {row['bytes'] / 1e6:>10.3f}  {fmts}"
        )
    ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
    lines.append(f"ops        {sum(info['ops'].values())} nodes: {ops}")
    art = info.get("artifact")
    if art:
        lines.append(f"artifact   {art['path']}: target {art['target']} ({art['target_kind']})")
        lines.append(f"  pipeline {art['pipeline'] or '(none)'}; built {art['created']}")
        lines.append("  versions " + ", ".join(f"{k} {v}" for k, v in art["versions"].items()))
        for f in art["files"]:
            lines.append(f"  {f['bytes']:>12,}  {f['sha256'][:16]}  {f['path']}")
    return "\n".join(lines)
