"""The compile driver: model -> passes -> backend -> artifact, plus the Python API behind the CLI.

Backends are found through the kind registry (:data:`llmc.targets.kinds.KINDS`, keyed by target
*kind*, never by target name): a new GPU is a data file in ``llmc/targets/data/``, a new kind of
hardware is one :class:`~llmc.targets.kinds.TargetKind`.

Example::

    from llmc.compile import compile_model
    result = compile_model("tiny", target="ref", passes="wanda:sparsity=0.5", out="out/tiny")
    print(result.report["passes"])
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc.analysis import graph_cost, param_summary, roofline
from llmc.artifact import (
    Artifact,
    artifact_writer,
    is_artifact,
    load_artifact,
    output_lock,
    write_graph,
    write_manifest,
)
from llmc.console import stage as progress_stage
from llmc.errors import LlmcError, TargetError
from llmc.ir.graph import Graph
from llmc.ir.structure import is_lm
from llmc.runtime.lm import InterpLM, LanguageModel
from llmc.safetensors_io import spilling
from llmc.targets import Target, configure_target, get_kind, get_target, resolve_spec


@dataclass
class Loaded:
    """A model ready to run or compile: graph, tokenizer and where it came from."""

    graph: Graph
    tokenizer: Any
    name: str
    source: str
    artifact: Artifact | None = None
    config: dict[str, Any] = field(default_factory=dict)


def load(spec: str, *, allow_pickle: bool = False, dtype: str | None = None) -> Loaded:
    """A model spec (HF directory, GGUF file, built-in name, ``file.py:factory``) or a compiled
    artifact. ``dtype`` (``f32``, ``f16``, ``bf16``) converts a model's weights; an artifact keeps
    the dtype it was compiled with."""
    if is_artifact(spec):
        if dtype is not None:
            raise LlmcError(
                f"{spec}: --dtype applies to models; an artifact runs in the dtype it was "
                "compiled with (recompile with --dtype)"
            )
        with progress_stage(f"loading {spec}"):
            art = load_artifact(spec)
            tok = load_artifact_tokenizer(art)
        cfg = art.manifest.get("hf_config")
        return Loaded(
            art.graph,
            tok,
            art.manifest.get("model", art.graph.name),
            str(spec),
            art,
            dict(cfg) if isinstance(cfg, dict) else {},
        )
    from llmc.frontends import load_model

    with progress_stage(f"loading {spec}"):
        m = load_model(spec, allow_pickle=allow_pickle, dtype=dtype)
    return Loaded(m.graph, m.tokenizer, m.name, m.source, None, dict(m.config or {}))


def runner_for(
    loaded: Loaded, device: str = "cpu", *, random_weights: bool = False
) -> LanguageModel:
    """An executable model: the interpreter for graphs and ref artifacts, the backend's runtime
    for compiled artifacts. ``random_weights`` lets a compiled artifact of an architecture-only
    model run (for speed measurements) with seeded random weights in place of the missing ones."""
    kind = get_target(loaded.artifact.target).kind if loaded.artifact is not None else "ref"
    if random_weights and kind not in ("cpu", "cuda", "rocm"):
        raise LlmcError(
            f"{loaded.source}: --random-weights applies to compiled TVM artifacts (cpu, GPU) of "
            "architecture-only models; compile the model for such a target first"
        )
    if kind == "ref" and any(p.is_meta for p in loaded.graph.params.values()):
        raise LlmcError(
            f"{loaded.source}: an architecture-only model has no weights to run; compile it for a "
            "target and run `llmc bench OUT --random-weights`, or analyse it with "
            "`llmc compile --dry-run` / `llmc simulate`"
        )
    require_lm(loaded)
    if loaded.artifact is None:
        return InterpLM(loaded.graph, device=device)
    if get_kind(kind).load is None:
        raise TargetError(
            f"{loaded.artifact.path}: artifacts for {loaded.artifact.target} ({kind}) cannot run "
            "on this machine"
        )
    load_fn = get_kind(kind).hook("load")
    if random_weights:
        return load_fn(loaded.artifact.path, random_weights=True)
    return load_fn(loaded.artifact.path)


def require_lm(loaded: Loaded) -> None:
    """Refuse, in one line, a graph that is not a language model (prompts, eval, bench)."""
    if not is_lm(loaded.graph):
        raise LlmcError(
            f"{loaded.source}: not a language model (inputs "
            f"{', '.join(v.name for v in loaded.graph.inputs)}); run it with "
            "`llmc run OUT --inputs x.safetensors` or `llmc.load(OUT)(*tensors)`"
        )


def require_tokenizer(loaded: Loaded, what: str = "text prompts") -> Any:
    """The model's tokenizer, or one line saying it has none (never a guessed one)."""
    require_lm(loaded)
    from llmc.tokenizer import require_tokenizer as _require

    return _require(loaded.tokenizer, loaded.source, what=what)


TOKENIZER_DIR = "tokenizer"


def save_tokenizer(tokenizer: Any, tmp: Path) -> dict[str, Any] | None:
    """Write ``tokenizer`` into ``tmp/tokenizer/``; the manifest's ``tokenizer`` field."""
    if tokenizer is None:
        return None
    if not hasattr(tokenizer, "save"):
        raise LlmcError(
            f"the model's tokenizer ({type(tokenizer).__name__}) cannot be saved into the "
            "artifact; give the model as a directory holding its tokenizer files"
        )
    from llmc.tokenizer import ByteTokenizer

    tokenizer.save(tmp / TOKENIZER_DIR)
    kind = "byte-level" if isinstance(tokenizer, ByteTokenizer) else "hf"
    return {"kind": kind, "dir": TOKENIZER_DIR, "vocab_size": int(tokenizer.vocab_size)}


def load_artifact_tokenizer(art: Artifact) -> Any:
    """The tokenizer the manifest names (None when the model had none)."""
    from llmc.artifact import ArtifactError, listed_dir

    field_ = art.manifest.get("tokenizer")
    if field_ is None:
        return None
    if not isinstance(field_, dict) or field_.get("kind") not in ("byte-level", "hf"):
        raise ArtifactError(f"{art.path / 'manifest.json'}: malformed 'tokenizer' entry")
    d = listed_dir(art.path, art.manifest, str(field_.get("dir", "")))
    from llmc.tokenizer import ByteTokenizer, load_tokenizer

    tok = load_tokenizer(d)
    if (field_["kind"] == "byte-level") != isinstance(tok, ByteTokenizer):
        raise ArtifactError(
            f"{d}: the manifest says a {field_['kind']} tokenizer, the files hold another kind"
        )
    return tok


def run_passes(
    graph: Graph,
    spec: str | None,
    recipe: str | None,
    *,
    target: str,
    options: dict[str, Any],
    dump_ir: str | None = None,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Run a pass pipeline on ``graph`` in place. ``tokenizer`` encodes calibration text: the
    model's own, never a default one (see :class:`llmc.passes.calibration.Calibration`)."""
    if not spec and not recipe and not dump_ir:
        return []
    from llmc.passes import PassContext, build_pipeline

    pm = build_pipeline(spec or None, Path(recipe) if recipe else None)
    ctx = PassContext(target=target, tokenizer=tokenizer, **options)
    if dump_ir:
        pm.dump_ir(Path(dump_ir))
    report = pm.run(graph, ctx)
    return list(report) if report is not None else []


@dataclass
class CompileResult:
    out: Path | None
    target: Target
    report: dict[str, Any]
    graph: Graph


def compile_model(
    model: str | Loaded,
    *,
    target: str = "ref",
    passes: str | None = None,
    recipe: str | None = None,
    out: str | Path | None = None,
    dump_ir: str | None = None,
    dry_run: bool = False,
    allow_pickle: bool = False,
    pass_options: dict[str, Any] | None = None,
    analysis_env: dict[str, int] | None = None,
    target_options: dict[str, Any] | None = None,
    dtype: str | None = None,
    random_weights: bool = False,
) -> CompileResult:
    """Load, transform and lower a model; write the artifact atomically to ``out``.

    ``target_options`` configures the target, any kind: ``{"arch": FILE, "set": ["key=value",
    ...]}`` (``--arch`` / ``--set``; see :func:`llmc.targets.configure_target`). ``random_weights``
    fills an architecture-only model with seeded random weights
    (:func:`llmc.frontends.zoo.materialize`) before the passes, so passes compute and the artifact
    holds real data (memory and time measurements of whole compiles)."""
    t_start = time.perf_counter()
    tgt = get_target(target)  # fail fast on an unknown target, before loading anything
    if target_options:
        tgt = configure_target(tgt, target_options)
    if get_kind(tgt.kind).lower is None:
        raise TargetError(f"target {target} has kind {tgt.kind!r}, which no backend handles")
    if tgt.kind == "cpu":  # a bad $LLMC_CPU_ISA fails before loading anything
        from llmc.targets.cpu_isa import kernel_isa

        kernel_isa()
    with contextlib.ExitStack() as stack:
        if out is not None and not dry_run:  # refuse a bad or busy -o before any work
            stack.enter_context(output_lock(Path(out)))
        # Weights the compile makes (converted checkpoint tensors, random weights, quantized
        # codes, pruned values) go to unlinked files in $TMPDIR as they are made: page cache the
        # kernel can reclaim, not anonymous memory, so models larger than RAM compile.
        stack.enter_context(spilling())
        return _compile_loaded(
            model,
            tgt,
            t_start,
            passes=passes,
            recipe=recipe,
            out=out,
            dump_ir=dump_ir,
            dry_run=dry_run,
            allow_pickle=allow_pickle,
            pass_options=pass_options,
            analysis_env=analysis_env,
            dtype=dtype,
            random_weights=random_weights,
            target_options=target_options,
        )


def _compile_loaded(
    model: str | Loaded,
    tgt: Target,
    t_start: float,
    *,
    passes: str | None,
    recipe: str | None,
    out: str | Path | None,
    dump_ir: str | None,
    dry_run: bool,
    allow_pickle: bool,
    pass_options: dict[str, Any] | None,
    analysis_env: dict[str, int] | None,
    dtype: str | None = None,
    random_weights: bool = False,
    target_options: dict[str, Any] | None = None,
) -> CompileResult:
    target = tgt.name
    if isinstance(model, Loaded):
        if dtype is not None:
            raise LlmcError("dtype applies when compile_model loads the model (give a spec)")
        loaded = model
    else:
        loaded = load(model, allow_pickle=allow_pickle, dtype=dtype)
    graph = loaded.graph
    if random_weights:
        if not graph.meta.get("architecture_only"):
            raise LlmcError(
                f"{loaded.source}: --random-weights applies to architecture-only models (llmc "
                "compile NAME for a name in `llmc.frontends.zoo`); this model has its weights"
            )
        from llmc.frontends.zoo import materialize

        materialize(graph, seed=0)  # one matrix at a time, each spilled (see compile_model)
        graph.meta["architecture_only"] = False
        graph.meta["random_weights_seed"] = 0
    t_loaded = time.perf_counter()
    pass_report = run_passes(
        graph,
        passes,
        recipe,
        target=target,
        options=dict(pass_options or {}),
        dump_ir=dump_ir,
        tokenizer=loaded.tokenizer,
    )
    t_passes = time.perf_counter()
    env = analysis_env or {"batch": 1, "seq": 1, "past": 127}
    lm = is_lm(graph)
    if not lm:  # a module's cost is at its own input shapes: only the batch symbol may vary,
        # and the symbols a hand-built graph's inputs still carry (e.g. `seq`) keep their values
        free = set().union(*(v.type.symbols() for v in graph.inputs)) if graph.inputs else set()
        env = {k: v for k, v in env.items() if k == "batch" or k in free}
    cost = graph_cost(graph, env)
    report: dict[str, Any] = {
        "model": loaded.name,
        "source": loaded.source,
        "target": tgt.name,
        "passes": pass_report,
        "pipeline": passes or (f"recipe:{recipe}" if recipe else ""),
        "params": param_summary(graph),
        "analysis": {"env": env, **cost.to_dict()},
        "timing_s": {"load": t_loaded - t_start, "passes": t_passes - t_loaded},
        "lm": lm,
    }
    if not lm:
        from collections import Counter

        report["ops"] = dict(sorted(Counter(n.op for n in graph.nodes).items()))
        report["inputs"] = [f"{v.name}: {v.type}" for v in graph.inputs]
    overrides = _target_overrides(target_options)
    if overrides:
        report["target_overrides"] = overrides
    spec = resolve_spec(tgt)
    layers = None
    if spec is not None:
        graph_dtype = str(graph.meta.get("dtype", "f32"))
        tokens = env.get("batch", 1) * env.get("seq", 1)
        report["roofline"] = roofline(cost.total, spec, graph_dtype, tokens)
        layers = layer_roofline(graph, spec, loaded.name, tgt.name, batch=env.get("batch", 1))
        if layers is not None:
            report["roofline_layers"] = layers.to_dict()
    if dry_run or out is None:
        report["timing_s"]["total"] = time.perf_counter() - t_start
        report["peak_rss_mb"] = peak_rss_mb()
        return CompileResult(None, tgt, report, graph)
    out = Path(out)
    # an architecture-only model's artifact records shapes, not weights: only stored ones count
    check_space(out, int(sum(p.storage_bytes() for p in graph.params.values() if not p.is_meta)))
    with artifact_writer(out) as tmp:
        backend = get_kind(tgt.kind).hook("lower")
        t_b = time.perf_counter()
        with progress_stage(f"building for {tgt.name}"):
            extra = backend(graph, tgt, tmp, report) or {}
        report["timing_s"]["backend"] = time.perf_counter() - t_b
        with progress_stage(f"writing {out} (report, manifest, hashes)"):
            tok_entry = save_tokenizer(loaded.tokenizer, tmp)
            report["timing_s"]["total"] = time.perf_counter() - t_start
            report["peak_rss_mb"] = peak_rss_mb()
            write_report(tmp, report, layers)
            write_manifest(
                tmp,
                {
                    "model": loaded.name,
                    "source": loaded.source,
                    "target": tgt.name,
                    "target_kind": tgt.kind,
                    "pipeline": report["pipeline"],
                    **_passes_entry(pass_report),
                    **_recipe_entry(recipe),
                    **_overrides_entry(overrides, spec),
                    "tokenizer": tok_entry,
                    **_hf_config_entry(loaded.config),
                    **extra,
                },
            )
    return CompileResult(out, tgt, report, graph)


def _target_overrides(options: dict[str, Any] | None) -> dict[str, Any]:
    """``--arch`` / ``--set`` as given (the manifest records them; ``llmc inspect`` shows them)."""
    if not options:
        return {}
    out: dict[str, Any] = {}
    if options.get("arch"):
        out["arch"] = str(options["arch"])
    if options.get("set"):
        out["set"] = [str(s) for s in options["set"]]
    return out


def _passes_entry(pass_report: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pass that ran with every option it ran with (defaults included), in order."""
    if not pass_report:
        return {}
    rows = [
        {"pass": str(r.get("pass", "?")), "options": r.get("options", {})}
        for r in pass_report
        if isinstance(r, dict)
    ]
    return {"passes": json.loads(json.dumps(rows, default=str))}


def _overrides_entry(overrides: dict[str, Any], spec: Any) -> dict[str, Any]:
    """The manifest's ``target_overrides`` and the spec they gave (only when there are any)."""
    if not overrides:
        return {}
    out: dict[str, Any] = {"target_overrides": overrides}
    if spec is not None:
        out["target_spec"] = json.loads(json.dumps(spec.to_dict(), default=str))
    return out


def _recipe_entry(recipe: str | None) -> dict[str, Any]:
    """A recipe pipeline for the manifest: its file, sha256 and text (the pipeline field says
    ``recipe:FILE``; the text lets ``llmc inspect`` show the passes after the file is gone)."""
    if not recipe:
        return {}
    return {"recipe": recipe_record(recipe)}


def recipe_record(recipe: str | Path) -> dict[str, Any]:
    """``{"file", "sha256", "text"}`` of a recipe file (the file was read by the pipeline
    already, so it exists; a file that vanished since gives its name only)."""
    import hashlib

    p = Path(recipe)
    try:
        data = p.read_bytes()
    except OSError:
        return {"file": str(recipe)}
    return {
        "file": str(recipe),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text": data.decode("utf-8", errors="replace"),
    }


def _hf_config_entry(config: dict[str, Any]) -> dict[str, Any]:
    """The model's Hugging Face config for the manifest (``llmc export`` of the artifact writes
    it as ``config.json``); nothing for models without one."""
    if not config or not config.get("architectures"):
        return {}
    try:
        return {"hf_config": json.loads(json.dumps(config))}
    except (TypeError, ValueError):  # a config with values JSON cannot hold: export rebuilds one
        return {}


def _compile_ref(graph: Graph, target: Target, tmp: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The ``ref`` target: the IR and weights, executed by the reference interpreter."""
    write_graph(graph, tmp)
    return {"runtime": "llmc-interpreter"}


def _load_ref(path: Path) -> LanguageModel:
    return InterpLM(load_artifact(path).graph)


def check_space(out: Path, weight_bytes: int) -> None:
    """Refuse, before building, an artifact that cannot fit: its folder's free space against the
    weights it stores (``weight_bytes``; up to twice: IR params and the backend's layout) plus
    code, and the process's file-size limit against the largest file. A write failing half-way
    through is caught too, but a toolchain that writes (LLVM, nvcc) may abort the process
    instead of raising."""
    need = 2 * weight_bytes + (64 << 20)
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        return
    if free < need:
        raise LlmcError(
            f"{out}: {out.parent} has {free / 1e6:.0f} MB free, the artifact needs about "
            f"{need / 1e6:.0f} MB; free some space or choose another -o"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < weight_bytes + (1 << 20):
        raise LlmcError(
            f"{out}: the file-size limit (ulimit -f) is {soft} bytes, the weights file needs "
            f"about {weight_bytes + (1 << 20)}; raise the limit"
        )


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


def layer_roofline(graph: Graph, spec: Any, model: str, target: str, batch: int = 1) -> Any:
    """The per-layer roofline (:mod:`llmc.codesign.roofline`) of an LM graph for a report:
    ``batch`` prompts of 512 tokens (at most half the model's positions) and 128 generated ones
    each; ``None`` for graphs without the LM ABI."""
    from llmc.ir.structure import is_lm

    if not is_lm(graph):
        return None
    from llmc.codesign.roofline import Scenario, analyze

    positions = int(graph.meta.get("max_position_embeddings") or 2048)
    prompt = max(1, min(512, positions // 2))
    decode = max(0, min(128, positions - prompt))
    sc = Scenario(batch=batch, prompt=prompt, decode=decode)
    return analyze(graph, spec, sc, model=model, target=target)


def write_report(tmp: Path, report: dict[str, Any], layers: Any = None) -> None:
    import json

    (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = render_report_md(report, layers)
    (tmp / "report.md").write_text(md)
    (tmp / "report.html").write_text(render_report_html(md, layers))


def render_report_html(md: str, layers: Any = None) -> str:
    """``report.md`` as a self-contained HTML page, with the roofline chart (inline SVG)."""
    import html

    parts: list[str] = []
    in_table = in_code = False
    for line in md.splitlines():
        if line.startswith("```"):
            parts.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            parts.append(html.escape(line))
            continue
        if line.startswith("|"):
            if line.startswith("|---"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            tag = "td" if in_table else "th"
            if not in_table:
                parts.append("<table>")
                in_table = True
            parts.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
            )
            continue
        if in_table:
            parts.append("</table>")
            in_table = False
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
            if line.startswith("## Roofline per layer") and layers is not None:
                from llmc.codesign.svg import roofline_svg

                parts.append(roofline_svg(layers))
        elif line.startswith("# "):
            parts.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            parts.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        parts.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}pre{font-size:11px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>llmc report</title>"
        f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )


def render_report_md(r: dict[str, Any], layers: Any = None) -> str:
    p = r["params"]
    lines = [
        f"# llmc report: {r['model']} -> {r['target']}",
        "",
        f"- source: `{r['source']}`",
        f"- pipeline: `{r['pipeline'] or '(none)'}`",
        f"- parameters: {p['parameters']:,} ({p['storage_bytes'] / 1e6:.2f} MB stored; "
        f"{p['quantized_parameters']:,} quantized, {p['sparse_parameters']:,} sparse)",
        f"- peak RSS: {r.get('peak_rss_mb', 0):.0f} MB; time: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in r["timing_s"].items()),
        "",
    ]
    if r["passes"]:
        lines += ["## Passes", "", "| pass | what it did |", "|---|---|"]
        for entry in r["passes"]:
            name = (
                entry.get("pass", entry.get("name", "?")) if isinstance(entry, dict) else str(entry)
            )
            rest = (
                {k: v for k, v in entry.items() if k not in ("pass", "name")}
                if isinstance(entry, dict)
                else {}
            )
            summary = ", ".join(
                f"{k}={_short(v)}" for k, v in rest.items() if not isinstance(v, (dict, list))
            )
            lines.append(f"| {name} | {summary} |")
        lines.append("")
    a = r["analysis"]
    env = ", ".join(f"{k}={v}" for k, v in a["env"].items())
    lines += [
        f"## Cost of one call ({env})",
        "",
        f"- FLOPs: {a['total']['flops']:.4g}; bytes read: {a['total']['bytes_read']:.4g}; "
        f"written: {a['total']['bytes_written']:.4g}",
        "",
        "| block | GFLOP | MB read |",
        "|---|---|---|",
    ]
    for k, v in a["by_block"].items():
        lines.append(f"| {k} | {v['flops'] / 1e9:.4f} | {v['bytes_read'] / 1e6:.3f} |")
    if layers is not None:
        lines += ["", *_roofline_md(layers)]
    for key in ("backend", "fpga", "roofline"):
        if key in r:
            lines += ["", f"## {key}", "", "```json", _json(r[key]), "```"]
    return "\n".join(lines) + "\n"


def _roofline_md(rep: Any) -> list[str]:
    sc = rep.scenario
    t = rep.totals
    lines = [
        f"## Roofline per layer (prompt {sc.prompt}, decode {sc.decode}, batch {sc.batch})",
        "",
        f"On {rep.target} ({rep.spec['mem_bandwidth'] / 1e9:.0f} GB/s; {rep.spec['source']}): "
        f"prefill {t['prefill']['time_ms']:.4g} ms, decode {t['decode']['ms_per_token']:.4g} "
        f"ms/token ({t['decode']['tokens_per_s']:.4g} tokens/s), KV cache "
        f"{rep.kv_cache['bytes'] / 2**20:.1f} MiB. Each op group summed over the layers; every "
        "row per layer is in report.json (`roofline_layers.rows`), and `llmc roofline` varies "
        "the request.",
        "",
        "| stage | group | GFLOP | MB | FLOP/byte | bound | ms | share |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for stage in ("prefill", "decode"):
        tot = t[stage]["time_ms"] or 1.0
        for g in rep.groups(stage):
            ai = "inf" if g.intensity == float("inf") else f"{g.intensity:.3g}"
            lines.append(
                f"| {stage} | {g.group} | {g.flops / 1e9:.4g} | {g.bytes / 1e6:.4g} | {ai} | "
                f"{g.bound} | {g.time_ms:.4g} | {100 * g.time_ms / tot:.1f}% |"
            )
    by_layer: dict[Any, list[float]] = {}
    for r in rep.rows:
        by_layer.setdefault(r.layer, [0.0, 0.0])[0 if r.stage == "prefill" else 1] += r.time_ms
    lines += ["", "| layer | prefill ms | decode ms/token |", "|---|---:|---:|"]
    for layer, (pre, dec) in by_layer.items():
        name = "outside layers" if layer is None else str(layer)
        lines.append(f"| {name} | {pre:.4g} | {dec:.4g} |")
    return lines


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _json(v: Any) -> str:
    import json

    return json.dumps(v, indent=2, default=str)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
