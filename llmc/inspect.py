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


def format_key(p: Any) -> str:
    """A param's storage as one short label: ``f32``, ``f32 int4 g64 sym rtn``,
    ``f32 int4 g32 sym rtn a8 ag32`` (int8 activations in blocks of 32),
    ``f32 int4 g32 sym rtn sf16`` (float16 scales),
    ``f32 2:4``, ``f32 unstructured``, ``f32 int8 g0 sym gptq 2:4`` (density is per weight and
    shown separately, as the layer's sparsity)."""
    parts = [str(p.type.dtype)]
    q = p.format.quant
    if q is not None:
        parts.append(f"int{q.bits} g{q.group} {'sym' if q.symmetric else 'asym'} {q.method}")
        if q.act_bits:
            parts.append(f"a{q.act_bits} ag{q.act_group}")
        if q.scale_dtype != "f32":
            parts.append(f"s{q.scale_dtype}")
    sp = p.format.sparsity
    if sp is not None:
        parts.append(f"{sp.n}:{sp.m}" if sp.kind == "nm" else "unstructured")
    return " ".join(parts)


def params_by_layer(graph: Graph) -> list[dict[str, Any]]:
    """Parameters grouped by decoder layer (``embed`` before the first, ``head`` after the last:
    by the param's module path, through :mod:`llmc.ir.structure`): count, stored bytes, how many
    params of each storage format (:func:`format_key`), and ``sparsity``, the fraction of the
    layer's sparse-format weights that are zero (from each weight's recorded density; None when
    no weight of the layer is stored sparse)."""
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
        g = groups.setdefault(
            key, {"parameters": 0, "bytes": 0.0, "formats": Counter(), "sp_n": 0, "sp_nz": 0.0}
        )
        n = _numel(p)
        g["parameters"] += n
        g["bytes"] += p.storage_bytes()
        g["formats"][format_key(p)] += 1
        if p.format.sparsity is not None:
            g["sp_n"] += n
            g["sp_nz"] += n * p.format.sparsity.density
    order = ["embed", *sorted(k for k in groups if isinstance(k, int)), "head"]
    return [
        {
            "layer": k,
            "parameters": groups[k]["parameters"],
            "bytes": int(groups[k]["bytes"]),
            "formats": dict(groups[k]["formats"]),
            "sparsity": round(1.0 - groups[k]["sp_nz"] / groups[k]["sp_n"], 4)
            if groups[k]["sp_n"]
            else None,
        }
        for k in order
        if k in groups
    ]


def params_by_format(graph: Graph) -> dict[str, dict[str, Any]]:
    """Over the whole model: per storage format, how many params, parameters and stored bytes."""
    out: dict[str, dict[str, Any]] = {}
    for p in graph.params.values():
        row = out.setdefault(format_key(p), {"params": 0, "parameters": 0, "bytes": 0})
        row["params"] += 1
        row["parameters"] += _numel(p)
        row["bytes"] += int(p.storage_bytes())
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["parameters"]))


def pipeline_info(graph: Graph, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The passes that made the model: ``spec`` as given (``recipe:FILE`` for a recipe), each
    pass with its options (an artifact's manifest records every option it ran with; else the
    spec's own), and the recipe's file, sha256 and text when a recipe was used."""
    spec = str((manifest or {}).get("pipeline", "") or graph.pipeline or "")
    passes = (manifest or {}).get("passes")
    if not isinstance(passes, list):
        passes = _parse_passes(graph.pipeline if spec.startswith("recipe:") else spec)
    out: dict[str, Any] = {"spec": spec, "passes": passes}
    recipe = (manifest or {}).get("recipe")
    if isinstance(recipe, dict):
        out["recipe"] = recipe
    return out


def _parse_passes(spec: str) -> list[dict[str, Any]]:
    if not spec or spec.startswith("recipe:"):
        return []
    from llmc.passes.spec import SpecError, parse_spec

    try:
        return [{"pass": p.name, "options": dict(p.options)} for p in parse_spec(spec)]
    except SpecError:  # an older artifact's free-form field: show it as given
        return [{"pass": spec, "options": {}}]


def inspect_loaded(loaded: Any) -> dict[str, Any]:
    """The description of a :class:`llmc.compile.Loaded` model or artifact (see module doc)."""
    g: Graph = loaded.graph
    meta = {k: g.meta[k] for k in META_KEYS if k in g.meta}
    tok = loaded.tokenizer
    m = loaded.artifact.manifest if loaded.artifact is not None else None
    out: dict[str, Any] = {
        "model": loaded.name,
        "source": loaded.source,
        "kind": "artifact" if loaded.artifact is not None else "model",
        "meta": meta,
        "architecture_only": any(p.is_meta for p in g.params.values()),
        "params": {
            **param_summary(g),
            "by_format": params_by_format(g),
            "by_layer": params_by_layer(g),
        },
        "ops": dict(sorted(Counter(n.op for n in g.nodes).items())),
        "inputs": [{"name": v.name, "type": str(v.type)} for v in g.inputs],
        "outputs": len(g.outputs),
        "tokenizer": None
        if tok is None
        else {"type": type(tok).__name__, "vocab_size": int(tok.vocab_size)},
        "pipeline": pipeline_info(g, m),
    }
    if loaded.artifact is not None and m is not None:
        base = loaded.artifact.path
        files = []
        for rel, digest in sorted(m.get("files", {}).items()):
            files.append({"path": rel, "bytes": (base / rel).stat().st_size, "sha256": digest})
        out["artifact"] = {
            "path": str(base),
            "target": m.get("target"),
            "target_kind": m.get("target_kind"),
            "target_overrides": m.get("target_overrides", {}),
            "target_spec": m.get("target_spec"),
            "pipeline": m.get("pipeline", ""),
            "created": m.get("created"),
            "versions": m.get("versions", {}),
            "bytes": sum(f["bytes"] for f in files),
            "files": files,
        }
    return out


def _opts(options: dict[str, Any]) -> str:
    """``key=value, ...`` in the pass-spec spelling (lists as ``a|b``; unset options left out)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "|".join(str(x) for x in v)
        return str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in options.items() if v is not None)


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
    lines.append(f"  {'format':34s} {'params':>7s} {'parameters':>14s} {'MB':>10s}")
    for fmt, row in p["by_format"].items():
        lines.append(
            f"  {fmt:34s} {row['params']:>7,} {row['parameters']:>14,} {row['bytes'] / 1e6:>10.3f}"
        )
    lines.append(f"  {'layer':>6s} {'parameters':>14s} {'MB':>10s} {'sparsity':>8s}  formats")
    for row in p["by_layer"]:
        fmts = ", ".join(f"{n} x {f}" for f, n in row["formats"].items())
        sp = "-" if row["sparsity"] is None else f"{row['sparsity']:.3f}"
        lines.append(
            f"  {row['layer']!s:>6s} {row['parameters']:>14,} {row['bytes'] / 1e6:>10.3f} "
            f"{sp:>8s}  {fmts}"
        )
    ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
    lines.append(f"ops        {sum(info['ops'].values())} nodes: {ops}")
    pl = info["pipeline"]
    lines.append(f"pipeline   {pl['spec'] or '(none)'}")
    rec = pl.get("recipe")
    if rec:
        lines.append(f"  recipe {rec['file']} (sha256 {str(rec.get('sha256', '?'))[:16]})")
    for i, ps in enumerate(pl["passes"]):
        lines.append(f"  {i + 1}. {ps['pass']}: {_opts(ps['options']) or '(defaults)'}")
    art = info.get("artifact")
    if art:
        lines.append(f"artifact   {art['path']}: target {art['target']} ({art['target_kind']})")
        ov = art.get("target_overrides") or {}
        if ov:
            given = [f"--arch {ov['arch']}"] if ov.get("arch") else []
            given += [f"--set {s}" for s in ov.get("set", [])]
            lines.append("  target overrides " + " ".join(given))
        if art.get("target_spec"):
            lines.append("  target spec " + _opts(art["target_spec"]))
        lines.append(f"  built {art['created']}")
        lines.append("  versions " + ", ".join(f"{k} {v}" for k, v in art["versions"].items()))
        lines.append(
            f"  {art['bytes']:>12,}  bytes in {len(art['files'])} files (size, sha256, path):"
        )
        for f in art["files"]:
            lines.append(f"  {f['bytes']:>12,}  {f['sha256'][:16]}  {f['path']}")
    return "\n".join(lines)
