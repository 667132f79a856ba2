"""``llmc``: the command-line interface.

Every user error ends in one line on stderr (``llmc: error: ...``) and a non-zero exit status, with
no traceback; ``--json`` prints exactly one JSON object on stdout. Progress (stage lines with the
elapsed time, bars) goes to stderr, only when stderr is a terminal or ``LLMC_PROGRESS=1``, and
never under ``--json`` (:mod:`llmc.console`).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llmc
from llmc.console import emit_json, pass_options, progress, set_quiet, stage
from llmc.errors import LlmcError

# ----------------------------------------------------------------------------------------------
# commands


def cmd_compile(a: argparse.Namespace) -> int:
    from llmc.compile import compile_model

    if a.out is None and not a.dry_run:
        a.out = str(Path("out") / _safe_name(a.model))
    t0 = time.perf_counter()
    with stage(f"compile {a.model} for {a.target}"):
        res = compile_model(
            a.model,
            target=a.target,
            dtype=a.dtype,
            passes=a.passes,
            recipe=a.recipe,
            out=None if a.dry_run else a.out,
            dump_ir=a.dump_ir,
            dry_run=a.dry_run,
            allow_pickle=a.allow_pickle,
            pass_options=pass_options(a),
            analysis_env={"batch": a.batch, "seq": a.seq, "past": a.past},
            target_options={"arch": a.arch, "set": a.set} if (a.arch or a.set) else None,
            random_weights=a.random_weights,
        )
    r = res.report
    for w in r.get("warnings", ()):  # e.g. a format slower than dense on this target
        print(f"warning: {w}", file=sys.stderr)
    if a.json:
        emit_json({"out": str(res.out) if res.out else None, **r})
        return 0
    p = r["params"]
    an = r["analysis"]["total"]
    print(
        f"model      {r['model']} ({p['parameters']:,} parameters, {p['storage_bytes'] / 1e6:.1f} MB)"
    )
    print(f"target     {res.target.name} ({res.target.description})")
    if r["pipeline"]:
        print(f"passes     {r['pipeline']}")
        for entry in r["passes"]:
            if isinstance(entry, dict):
                name = entry.get("pass", entry.get("name", "?"))
                summ = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in entry.items()
                    if k not in ("pass", "name") and not isinstance(v, (dict, list))
                )
                print(f"  - {name}: {summ}")
    env = r["analysis"]["env"]
    if r.get("lm", True):
        print(
            f"cost       {an['flops'] / 1e9:.3f} GFLOP, {an['bytes_read'] / 1e6:.1f} MB read per "
            f"call (batch={env['batch']}, seq={env['seq']}, past={env['past']})"
        )
    else:  # a module (file.py:factory): its own input shapes, no tokens or KV cache
        ops = {k: v for k, v in r.get("ops", {}).items() if k != "param"}
        print(
            f"graph      {sum(ops.values())} ops: " + ", ".join(f"{k} {v}" for k, v in ops.items())
        )
        print(
            f"cost       {_flops(an['flops'])}, {an['bytes_read'] / 1e6:.3f} MB read per call "
            f"(inputs {', '.join(r.get('inputs', []))})"
        )
    if "roofline" in r:
        rf = r["roofline"]
        per = (
            "per call"
            if not r.get("lm", True)
            else f"per call, <= {rf['max_tokens_per_s']:.4g} tokens/s"
        )
        print(
            f"roofline   >= {rf['min_ms_per_call']:.3f} ms {per} on {res.target.name} "
            f"({rf['bound']}-bound, {rf['arithmetic_intensity']:.2f} FLOP/byte vs ridge "
            f"{rf['ridge_point']:.0f})"
        )
    print(f"peak RSS   {r['peak_rss_mb']:.0f} MB; {time.perf_counter() - t0:.2f} s")
    if res.out is not None:
        print(f"artifact   {res.out}")
    return 0


def _flops(f: float) -> str:
    return f"{f / 1e9:.3f} GFLOP" if f >= 1e8 else f"{f / 1e6:.3f} MFLOP"


def _safe_name(model: str) -> str:
    base = Path(model.split(":")[0]).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)


def cmd_run_module(a: argparse.Namespace) -> int:
    """``llmc run OUT --inputs x.safetensors``: one call of a non-LM artifact."""
    import time

    from llmc.runtime.module import load_inputs, load_module, save_outputs

    mod = load_module(a.model)
    inputs = load_inputs(Path(a.inputs))
    t0 = time.perf_counter()
    outs = mod.named(inputs)
    seconds = time.perf_counter() - t0
    dest = Path(a.outputs) if a.outputs else Path(a.inputs).with_suffix(".out.safetensors")
    save_outputs(outs, dest)
    out = {
        "model": str(a.model),
        "target": mod.target,
        "inputs": {k: _tensor_fields(v) for k, v in inputs.items()},
        "outputs": {k: _tensor_fields(v) for k, v in outs.items()},
        "outputs_file": str(dest),
        "seconds": seconds,
    }
    if a.json:
        emit_json(out)
        return 0
    for k, v in outs.items():
        print(f"{k:<12} {str(v.dtype).removeprefix('torch.')}{list(v.shape)}")
    print(f"wrote {dest} ({seconds * 1e3:.1f} ms)")
    return 0


def _tensor_fields(t: Any) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def cmd_run(a: argparse.Namespace) -> int:
    if a.inputs is not None:
        return cmd_run_module(a)
    if a.outputs is not None:
        raise LlmcError("--outputs goes with --inputs (a non-LM artifact's outputs)")
    from llmc.compile import load, require_tokenizer, runner_for
    from llmc.runtime.lm import generate

    loaded = load(a.model, allow_pickle=a.allow_pickle)
    tok = loaded.tokenizer
    if a.prompt_ids is not None:  # ids in; text out only when the model has a tokenizer
        ids = list(a.prompt_ids)
        a.prompt = tok.decode(ids) if tok is not None else None
    else:
        tok = require_tokenizer(loaded)
        ids = tok.encode(a.prompt)
        if not ids:
            raise LlmcError("--prompt: the prompt encodes to no tokens; give some text")
    lm = runner_for(loaded)
    stream = tok is not None and not a.json and sys.stdout.isatty()
    if stream:
        sys.stdout.write(a.prompt)
        sys.stdout.flush()
    pieces: list[int] = []

    def on_token(t: int) -> None:
        if stream:
            pieces.append(t)
            text = tok.decode(pieces)
            if not text.endswith("\ufffd"):  # wait for complete UTF-8 sequences
                sys.stdout.write(text)
                sys.stdout.flush()
                pieces.clear()

    res = generate(
        lm,
        ids,
        a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        eos_id=getattr(tok, "eos_id", None),
        on_token=on_token,
    )
    out: dict[str, Any] = {"model": loaded.name}
    if tok is not None:
        out.update(prompt=a.prompt, completion=tok.decode(res.tokens))
    else:
        out["prompt_ids"] = ids
    out.update(
        tokens=res.tokens,
        prompt_tokens=res.prompt_tokens,
        new_tokens=res.new_tokens,
        prefill_tokens_per_s=res.prefill_tokens_per_s,
        decode_tokens_per_s=res.decode_tokens_per_s,
        **_skip_fields(lm),
        **_device_fields(lm),
    )
    if _prunes(loaded.graph):
        out.update(
            _prune_fields(
                loaded.graph, res.prompt_tokens, res.prefill_token_fraction, res.kv_after_prefill
            )
        )
    if a.json:
        emit_json(out)
        return 0
    if tok is None:
        print(" ".join(str(t) for t in res.tokens))
    elif stream:
        if pieces:
            sys.stdout.write(tok.decode(pieces))
        sys.stdout.write("\n")
    else:
        print(a.prompt + out["completion"])
    print(
        f"[{res.prompt_tokens} prompt tokens, {res.new_tokens} new; "
        f"prefill {res.prefill_tokens_per_s:.1f} tok/s, decode {res.decode_tokens_per_s:.1f} tok/s]",
        file=sys.stderr,
    )
    return 0


def _skip_fields(lm: Any) -> dict[str, Any]:
    """``ffn_skip_fraction`` and ``ffn_skip_histogram`` of a model that skips FFN blocks
    (``ffn-skip``; docs/adaptive.md), else nothing."""
    stats = lm.skip_stats() if hasattr(lm, "skip_stats") else None
    if not stats:
        return {}
    return {k: stats[k] for k in ("ffn_skip_fraction", "ffn_skip_histogram")}


def _device_fields(lm: Any) -> dict[str, Any]:
    """What a simulated device adds about the run (FPGA: the cycle model's replay of the
    streams it ran, ``fpga_decode_ms_per_token``...), else nothing."""
    timing = getattr(lm, "device_timing", None)
    return timing() if timing is not None else {}


def _prunes(graph: Any) -> bool:
    return any(n.op == "gather_rows" for _, n in graph.walk())


def _prune_fields(
    graph: Any, prompt: int, fraction: float, kv: list[int] | None = None
) -> dict[str, Any]:
    """``prefill_token_fraction`` (mean over layers of kept / prompt tokens) and the FLOPs of a
    ``prompt``-token prefill with the kept counts (``kv``: each layer's cache length after
    prefill; else the pass's schedule) and without pruning (every count = ``prompt``)."""
    from llmc.analysis import graph_cost
    from llmc.ir.ops_adaptive import fresh_symbols
    from llmc.ir.structure import Structure

    s = Structure(graph)
    sched = graph.meta.get("token_prune", {}).get("schedule") or []
    base = {"batch": 1, "seq": prompt, "past": 0}
    base.update({f"past_{i}": 0 for i in range(int(graph.meta.get("num_layers", 0)))})
    dense, pruned = dict(base), dict(base)
    for _, n in graph.walk():
        layer = s.layer(n)
        for name in fresh_symbols(n.op, n.attrs):
            dense[name] = prompt
            if kv is not None and layer is not None and layer < len(kv):
                pruned[name] = kv[layer]
            elif layer is not None and layer < len(sched):
                pruned[name] = max(1, round(sched[layer] * prompt))
    # the prefill run/eval/bench measured is generation's: the head on the last row only
    from llmc.ir.lastrow import last_row_graph

    g = last_row_graph(graph) or graph
    f_pruned = graph_cost(g, pruned).total.flops
    f_dense = graph_cost(g, dense).total.flops
    out: dict[str, Any] = {
        "prefill_token_fraction": fraction,
        "prefill_flops": f_pruned,
        "prefill_flops_dense": f_dense,
        "prefill_flops_ratio": f_pruned / f_dense if f_dense else 1.0,
    }
    if kv is not None:
        out["prefill_kept_per_layer"] = list(kv)
    return out


def cmd_eval(a: argparse.Namespace) -> int:
    from llmc.compile import load, require_tokenizer, run_passes, runner_for
    from llmc.data import eval_windows, read_documents, text_windows
    from llmc.runtime.lm import InterpLM, evaluate

    if a.data is not None:
        read_documents(a.data)  # a bad file fails before the model loads
    loaded = load(a.model, allow_pickle=a.allow_pickle, dtype=a.dtype)
    tok = require_tokenizer(loaded, "the evaluation text")
    window = min(a.window, int(loaded.graph.meta.get("max_position_embeddings", a.window)))
    if window < 2:
        raise LlmcError(f"--window: the model has {window} positions; evaluation needs 2")
    if a.data is not None:
        windows = text_windows(a.data, window, max_tokens=a.max_tokens, tokenizer=tok)
    else:
        windows = eval_windows(window, max_tokens=a.max_tokens, tokenizer=tok)
    if a.limit is not None:
        windows = windows[: a.limit]
    reference = None
    t0 = time.perf_counter()
    if a.passes or a.recipe:
        if loaded.artifact is not None:
            raise LlmcError(
                "--passes applies to models, not compiled artifacts (compile with them)"
            )
        reference = InterpLM(loaded.graph.copy())
        pass_report = run_passes(
            loaded.graph, a.passes, a.recipe, target="ref", options=pass_options(a), tokenizer=tok
        )
    else:
        pass_report = []
    t_passes = time.perf_counter() - t0
    lm = runner_for(loaded)
    prunes = _prunes(loaded.graph)
    prompt = a.prompt_len if a.prompt_len is not None else (3 * window // 4 if prunes else 0)
    if prompt >= window:
        raise LlmcError(f"--prompt-len {prompt} must be below --window {window}")
    if prunes and prompt == 0:
        raise LlmcError(
            "--prompt-len 0: a token-pruning model has no logits for the tokens it prunes; "
            "score a continuation (--prompt-len N, N < --window)"
        )
    with progress(int(windows.shape[0]), f"eval ({window}-token windows)") as bar:
        q = evaluate(
            lm,
            windows,
            reference=reference,
            batch_size=a.batch_size,
            progress=bar.update,
            prompt=prompt,
        )
    vocab = int(loaded.graph.meta.get("vocab_size", 0))
    out = {
        "model": loaded.name,
        "source": loaded.source,
        "perplexity": q.perplexity,
        "tokens": q.tokens,
        "uniform_perplexity": vocab,
        "nll": q.nll,
        "window": q.window,
        "windows": q.windows,
        "split": "heldout" if a.data is None else "file",
        **({"data": str(a.data)} if a.data is not None else {}),
        "passes": a.passes or "",
        "pass_seconds": t_passes,
    }
    if prompt:
        out["prompt_len"] = prompt
    if q.agreement is not None:
        out["agreement"] = q.agreement
    out.update(_skip_fields(lm))
    if prunes and q.prefill_token_fraction is not None:
        out.update(_prune_fields(loaded.graph, prompt, q.prefill_token_fraction))
    if pass_report:
        out["pass_report"] = pass_report
    if a.json:
        emit_json(out)
        return 0
    print(f"model        {loaded.name}")
    print(
        f"perplexity   {q.perplexity:.4f} on {q.tokens} held-out tokens ({q.windows} x {q.window})"
    )
    print(f"uniform      {vocab} (vocabulary size)")
    if q.agreement is not None:
        print(f"agreement    {q.agreement:.4f} next-token agreement with the unmodified model")
    if "ffn_skip_fraction" in out:
        print(
            f"ffn skipped  {out['ffn_skip_fraction']:.4f} of decode FFN blocks "
            f"(per layer {out['ffn_skip_histogram']})"
        )
    if "prefill_token_fraction" in out:
        print(
            f"tokens kept  {out['prefill_token_fraction']:.4f} of the {prompt}-token prompts "
            f"(mean over layers); prefill FLOPs {out['prefill_flops_ratio']:.3f} of dense"
        )
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from llmc.compile import load, runner_for
    from llmc.runtime.bench import bench, check_batch

    loaded = load(a.model, allow_pickle=a.allow_pickle, dtype=a.dtype)
    lm = runner_for(loaded, random_weights=a.random_weights)
    check_batch(lm, a.batch, loaded.source)
    rounds = progress(a.repeat, f"bench (batch {a.batch}, {a.new_tokens} new tokens)")
    with rounds:
        best = bench(
            lm,
            batch=a.batch,
            prompt_len=a.prompt_len,
            new_tokens=a.new_tokens,
            repeat=a.repeat,
            on_round=rounds.update,
        )
    out = {
        "model": loaded.name,
        "target": loaded.artifact.target if loaded.artifact else "ref",
        "device": getattr(lm, "device", "cpu"),
        "dtype": str(loaded.graph.meta.get("dtype", "f32")),
        "batch": best.batch,
        "prompt_tokens": best.prompt_tokens,
        "new_tokens": best.new_tokens,
        "prefill_tokens_per_s": best.prefill_tokens_per_s,
        "decode_tokens_per_s": best.decode_tokens_per_s,
        "decode_tokens_per_s_total": best.decode_tokens_per_s_total,
        "decode_ms_per_token": best.decode_ms_per_step,
        "repeat": a.repeat,
        "random_weights": bool(a.random_weights),
        **_skip_fields(lm),
        **_device_fields(lm),
    }
    if _prunes(loaded.graph):
        out.update(
            _prune_fields(
                loaded.graph, best.prompt_tokens, best.prefill_token_fraction, best.kv_after_prefill
            )
        )
    bound = _bench_roofline(loaded, best)
    if bound is not None:
        out["roofline"] = bound
    if a.json:
        emit_json(out)
    else:
        for k, v in out.items():
            if isinstance(v, dict):
                v = ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items())
            print(f"{k:26s} {_fmt(v)}")
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _bench_roofline(loaded: Any, best: Any) -> dict[str, Any] | None:
    """The roofline bound of the request ``llmc bench`` measured (batch, prompt, new tokens) on
    the artifact's target spec (this machine's measured spec for ``cpu``), beside the measured
    rates; None for the interpreter (no spec) and non-LM graphs."""
    if loaded.artifact is None:
        return None
    from llmc.codesign.roofline import Scenario, analyze
    from llmc.targets import get_target, resolve_spec

    try:
        spec = resolve_spec(get_target(loaded.artifact.target))
    except LlmcError:
        return None
    if spec is None:
        return None
    sc = Scenario(batch=best.batch, prompt=best.prompt_tokens, decode=best.new_tokens)
    t = analyze(loaded.graph, spec, sc).totals
    dec_ms = t["decode"]["time_ms"]
    max_total = 1e3 * best.batch / dec_ms if dec_ms else math.inf
    return {
        "batch": best.batch,
        "prefill_ms_min": t["prefill"]["time_ms"],
        "decode_ms_per_step_min": dec_ms,
        "decode_tokens_per_s_total_max": max_total,
        "decode_fraction_of_bound": best.decode_tokens_per_s_total / max_total
        if max_total and math.isfinite(max_total)
        else None,
        "spec_source": getattr(spec, "source", ""),
    }


def cmd_inspect(a: argparse.Namespace) -> int:
    from llmc.compile import load
    from llmc.inspect import inspect_loaded, render

    info = inspect_loaded(load(a.model, allow_pickle=a.allow_pickle))
    if a.json:
        emit_json(info)
    else:
        print(render(info))
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from llmc.targets import get_target, target_names

    rows = []
    for name in target_names():
        try:
            t = get_target(name)
            rows.append({"name": t.name, "kind": t.kind, "description": t.description})
        except LlmcError as e:  # an FPGA arch file failing to load must not hide the others
            rows.append({"name": name, "kind": "?", "description": f"unavailable: {e}"})
    if a.json:
        emit_json({"targets": rows})
    else:
        for r in rows:
            print(f"{r['name']:8s} {r['kind']:5s} {r['description']}")
    return 0


def cmd_passes(a: argparse.Namespace) -> int:
    from llmc.passes import list_passes

    rows = [{"name": n, "description": d} for n, d in list_passes()]
    if a.json:
        emit_json({"passes": rows})
    else:
        for r in rows:
            print(f"{r['name']:16s} {r['description']}")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    from llmc.fpga.cli import simulate_command

    return simulate_command(a)


def cmd_roofline(a: argparse.Namespace) -> int:
    from llmc.codesign.cli import roofline_command

    return roofline_command(a)


def cmd_study(a: argparse.Namespace) -> int:
    from llmc.codesign.cli import study_command

    return study_command(a)


EXPORT_FORMATS = ("hf", "compressed-tensors", "gguf")


def cmd_export(a: argparse.Namespace) -> int:
    from llmc.compile import load, run_passes
    from llmc.export_hf import export_hf

    if a.format not in EXPORT_FORMATS:
        raise LlmcError(
            f"unknown export format {a.format!r} (supported: {', '.join(EXPORT_FORMATS)})"
        )
    if a.format != "gguf" and (a.gguf_type is not None or a.gguf_exact):
        raise LlmcError("--gguf-type and --gguf-exact apply to --format gguf only")
    if a.format == "gguf":
        from llmc.export_gguf import GGUF_TYPES

        if (a.gguf_type or "f16") not in GGUF_TYPES:  # before loading the model
            raise LlmcError(
                f"--gguf-type {a.gguf_type!r} is not supported (supported: {', '.join(GGUF_TYPES)})"
            )
    if a.format == "compressed-tensors":
        from llmc.export_ct import require_library

        require_library()  # before loading the model
    loaded = load(a.model, allow_pickle=a.allow_pickle)
    recipe: dict[str, Any] | None = None
    if loaded.artifact is not None:
        m = loaded.artifact.manifest
        if not loaded.graph.pipeline:  # the passes an artifact was compiled with
            loaded.graph.pipeline = str(m.get("pipeline", "") or "")
        if isinstance(m.get("recipe"), dict):  # compiled with a recipe: its record travels on
            recipe = dict(m["recipe"])
    prior = loaded.graph.pipeline
    if a.format == "compressed-tensors":
        from llmc.export_ct import refuse_unrepresentable

        # before running passes that the checkpoint could not hold (a recipe's too)
        todo = a.passes or ""
        if a.recipe:
            from llmc.passes.spec import format_spec, load_recipe

            todo = format_spec(load_recipe(a.recipe).passes)
        refuse_unrepresentable(loaded.graph, f"{loaded.graph.pipeline},{todo}")
    report = run_passes(
        loaded.graph,
        a.passes,
        a.recipe,
        target="ref",
        options=pass_options(a),
        tokenizer=loaded.tokenizer,
    )
    # the pipeline recorded: as given (a recipe as recipe:FILE, with its file, hash and text)
    recorded: str | None = None
    if a.recipe:
        from llmc.compile import recipe_record

        recipe = recipe_record(a.recipe)
        recorded = ",".join(x for x in (prior, f"recipe:{a.recipe}") if x)
    if a.format == "gguf":
        from llmc.export_gguf import export_gguf

        info = export_gguf(
            loaded.graph,
            Path(a.out),
            gguf_type=a.gguf_type or "f16",
            tokenizer=loaded.tokenizer,
            config=loaded.config or None,
            exact=a.gguf_exact,
            pipeline=recorded,
            recipe=recipe,
        )
    elif a.format == "compressed-tensors":
        from llmc.export_ct import export_compressed_tensors

        info = export_compressed_tensors(
            loaded.graph,
            Path(a.out),
            tokenizer=loaded.tokenizer,
            config=loaded.config or None,
            pipeline=recorded,
            recipe=recipe,
        )
    else:
        info = export_hf(
            loaded.graph,
            Path(a.out),
            tokenizer=loaded.tokenizer,
            config=loaded.config or None,
            pipeline=recorded,
            recipe=recipe,
        )
    if a.json:
        emit_json({"out": a.out, "passes": report, **(info or {})})
    else:
        print(f"exported {loaded.name} to {a.out}")
        if a.format == "gguf":
            t = info["gguf_type"].upper()
            print(
                f"  {t}: {len(info['exact'])} weight(s) keep llmc's codes (scales as float16), "
                f"{len(info['requantized'])} requantized, {len(info['quantized'])} float "
                f"weight(s) quantized, {len(info['dequantized'])} dequantized"
            )
            if info["scale_rounded"]:
                print(
                    f"  {len(info['scale_rounded'])} of them had float32 scales, rounded to "
                    "float16 (quantize with scale_dtype=f16 for a bit-exact file)"
                )
            for name, why in info["requantized"].items():
                print(f"  requantized {name}: {why}")
            print(f"  tokenizer: {info['tokenizer']}")
            for note in info["notes"]:
                print(f"  note: {note}")
        elif a.format == "compressed-tensors":
            print(
                f"  compressed-tensors {info['compressed_tensors']}: format {info['format']}, "
                f"{info['quantized_weights']} quantized weight(s) in {info['config_groups']} "
                f"config group(s), {info['sparse_weights']} sparse weight(s) with their zeros "
                "stored (the library has no sparse compressor)"
            )
            for note in info["notes"]:
                print(f"  note: {note}")
    return 0


def cmd_train_tiny(a: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "tools" / "train_tiny.py"
    if not script.is_file():
        raise LlmcError(f"{script}: training script not found (it ships with the source tree)")
    sys.argv = [str(script), *a.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


# ----------------------------------------------------------------------------------------------
# parser


class _ArgError(Exception):
    """argparse found a bad command line; main() prints it as one ``llmc: error:`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _ArgError(f"{message} (see `{self.prog} --help`)")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} is out of range (must be >= {low})")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in ``[low, high]`` (``(low, high]`` if low_open)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo}{low:g}, {high:g}]")
        return v

    parse.__name__ = "number"
    return parse


def token_ids(text: str) -> list[int]:
    """An argparse ``type``: comma-separated non-negative token ids, at least one."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ids") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more ids >= 0, e.g. 1,2,3")
    return ids


def _add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=("f32", "f16", "bf16"),
        help="convert the model's weights and compute to this dtype (models, not artifacts)",
    )


def _add_pass_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--passes", metavar="SPEC", help="pass pipeline, e.g. wanda:sparsity=0.5,rtn:bits=4"
    )
    g.add_argument("--recipe", metavar="FILE", help="YAML pass recipe")
    p.add_argument(
        "--calib", metavar="FILE", help="calibration text file (default: embedded train split)"
    )
    p.add_argument("--calib-samples", type=int_at_least(1), metavar="N", help="calibration samples")
    p.add_argument(
        "--calib-seqlen", type=int_at_least(2), metavar="L", help="calibration sequence length"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="llmc",
        description="Ahead-of-time compiler for transformer language models.",
        epilog=(
            "MODEL is a Hugging Face directory, a built-in name (tiny, llama2-7b, ...) or "
            "file.py:factory. Environment: LLMC_PROGRESS=1/0 (progress on stderr), "
            "LLMC_CPU_ISA=avx512_vnni|avx2|portable (CPU kernel family, default: the host's), "
            "LLMC_CPU_AMX=0 (W8A8 prefill on AVX-512 VNNI, not AMX tiles), "
            "TVM_NUM_THREADS (CPU threads)."
        ),
    )
    ap.add_argument("--version", action="version", version=f"llmc {llmc.__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks (or LLMC_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("--debug", action="store_true", help="show tracebacks (or LLMC_DEBUG=1)")
        return p

    p = add("compile", "compile a model for a target into an artifact directory")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", default="ref", help="target name (see `llmc targets`; default: ref)")
    p.add_argument("-o", "--out", metavar="OUT", help="artifact directory (default: out/<model>)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--dry-run", action="store_true", help="analyse only; write nothing")
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow pickle checkpoints (weights_only)"
    )
    _add_dtype_arg(p)
    p.add_argument(
        "--batch",
        type=int_at_least(1),
        default=1,
        help="sequences per call for the cost analysis and roofline (default 1)",
    )
    p.add_argument(
        "--seq", type=int_at_least(1), default=1, help="tokens per call for the cost analysis"
    )
    p.add_argument(
        "--past", type=int_at_least(0), default=127, help="cached positions for the cost analysis"
    )
    _add_pass_args(p)
    p.add_argument(
        "--arch",
        metavar="FILE",
        help="target YAML: an FPGA board file, or `base: h100` + a spec: section (docs/backends.md)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (bandwidth_gbs, mem_gb, peak_tflops.<dtype>, power_w, "
        "price_usd) or an FPGA board field (dsp.total, hbm.bandwidth_gbs, ...)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="fill an architecture-only model with seeded random weights before compiling",
    )
    p.set_defaults(func=cmd_compile)

    p = add("run", "generate text with a model or a compiled artifact, or call any artifact")
    p.add_argument("model", metavar="OUT|MODEL")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (encoded with the model's tokenizer)")
    g.add_argument("--prompt-ids", type=token_ids, metavar="IDS", help="prompt as token ids: 1,2,3")
    g.add_argument(
        "--inputs",
        metavar="X.safetensors",
        help="call a compiled artifact (any module) once on these tensors, named as its inputs",
    )
    p.add_argument(
        "--outputs",
        metavar="Y.safetensors",
        default=None,
        help="with --inputs: where to write the outputs (default: X.out.safetensors)",
    )
    p.add_argument("--max-new-tokens", type=int_at_least(0), default=64)
    p.add_argument("--temperature", type=float_in(0, 1e4), default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int_at_least(0), default=0, help="0 = no top-k cut")
    p.add_argument("--top-p", type=float_in(0, 1, low_open=True), default=1.0)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--allow-pickle", action="store_true")
    p.set_defaults(func=cmd_run)

    p = add("eval", "held-out perplexity (and agreement with the unmodified model under --passes)")
    p.add_argument("model", metavar="MODEL|OUT")
    p.add_argument(
        "--window", type=int_at_least(2), default=256, help="tokens per evaluation window"
    )
    p.add_argument(
        "--max-tokens", type=int_at_least(2), default=None, help="evaluate the first N tokens"
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        default=None,
        help="evaluate on this text file (UTF-8; .jsonl: one object per line with a field "
        '"text"), or a Hugging Face dataset\'s "text" column (hf:NAME[:SPLIT] or a save_to_disk '
        "directory; needs the `datasets` library) instead of the embedded held-out split",
    )
    p.add_argument("--limit", type=int_at_least(1), default=None, help="evaluate at most N windows")
    p.add_argument("--batch-size", type=int_at_least(1), default=8)
    p.add_argument(
        "--prompt-len",
        type=int_at_least(0),
        default=None,
        help="score only the continuation after prefilling each window's first N tokens "
        "(default 0: every token; a token-pruning model: 3/4 of the window)",
    )
    _add_dtype_arg(p)
    p.add_argument("--allow-pickle", action="store_true")
    _add_pass_args(p)
    p.set_defaults(func=cmd_eval)

    p = add("bench", "prefill and decode speed on this machine")
    p.add_argument("model", metavar="OUT|MODEL")
    p.add_argument("--prompt-len", type=int_at_least(1), default=128, help="tokens per prompt")
    p.add_argument(
        "--new-tokens", type=int_at_least(1), default=64, help="tokens generated per sequence"
    )
    p.add_argument(
        "--batch",
        type=int_at_least(1),
        default=1,
        help="prompts per request, prefilled and decoded together; decode tok/s is reported "
        "per sequence and in total (default 1)",
    )
    p.add_argument("--repeat", type=int_at_least(1), default=3, help="rounds; the best counts")
    _add_dtype_arg(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="run an artifact of an architecture-only model with seeded random weights",
    )
    p.add_argument("--allow-pickle", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = add("simulate", "simulate a model on a FlightLLM FPGA target (cycle-level model)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", default="u280", help="u280 (default) or vhk158")
    p.add_argument(
        "--prefill", type=int_at_least(1), default=128, help="prompt tokens (default 128)"
    )
    p.add_argument(
        "--decode", type=int_at_least(0), default=512, help="generated tokens (default 512)"
    )
    p.add_argument("--arch", metavar="FILE", help="architecture YAML (may start with base: u280)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an arch field"
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="simulate every layer instead of folding identical layers (slower, same result)",
    )
    from llmc.fpga.cli import skip_rate_arg

    p.add_argument(
        "--skip-rate",
        type=skip_rate_arg,
        metavar="R",
        help="ffn-skip models: fraction of decode FFN blocks skipped, in [0, 1] (no data needed)",
    )
    p.add_argument("--allow-pickle", action="store_true")
    _add_pass_args(p)
    p.set_defaults(func=cmd_simulate)

    p = add("roofline", "per-layer roofline of a model on a target, for prefill and decode")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", required=True, help="target name (see `llmc targets`)")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="prompts per request (1)")
    p.add_argument("--prompt", type=int_at_least(1), default=512, help="prompt tokens (512)")
    p.add_argument("--decode", type=int_at_least(0), default=128, help="generated tokens (128)")
    p.add_argument(
        "--kv-bits", type=int, choices=(4, 8, 16, 32), default=None, help="KV cache width"
    )
    p.add_argument(
        "--act-bits",
        type=int,
        choices=(4, 8, 16, 32),
        default=None,
        help="activation width (<= 8: int8 matrix products)",
    )
    p.add_argument(
        "--skip-rate",
        type=skip_rate_arg,
        metavar="R",
        help="ffn-skip models: fraction of decode FFN blocks skipped, in [0, 1]",
    )
    p.add_argument(
        "--efficiency",
        metavar="FILE",
        help="also estimate with measured per-kernel-class efficiency factors "
        "(bench/roofline_validate.json)",
    )
    p.add_argument(
        "--memory-level",
        choices=("auto", "dram", "llc"),
        default="auto",
        help="bandwidth the bytes are read at: the last-level cache's where a decode step's reads "
        "fit in it, else its share at the LLC's and the rest at DRAM's (auto; cpu target), DRAM, "
        "or the LLC",
    )
    p.add_argument("--csv", metavar="FILE", help="write every row (stage, layer, group) as CSV")
    p.add_argument("--plot", metavar="FILE", help="write the roofline chart (.png, .svg, .pdf)")
    p.add_argument(
        "--arch",
        metavar="FILE",
        help="target YAML: an FPGA board file, or `base: h100` + a spec: section (docs/backends.md)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (bandwidth_gbs, mem_gb, peak_tflops.<dtype>, power_w, "
        "price_usd) or an FPGA board field (dsp.total, hbm.bandwidth_gbs, ...)",
    )
    p.add_argument("--allow-pickle", action="store_true")
    _add_dtype_arg(p)
    _add_pass_args(p)
    p.set_defaults(func=cmd_roofline)

    p = add("study", "hardware/compression design-space studies")
    study_sub = p.add_subparsers(dest="study_command", metavar="STUDY", required=True)
    p = study_sub.add_parser(
        "sweep",
        help="sweep hardware overrides x compression settings: speed, quality, cost, Pareto",
        description="Evaluate every combination of --vary values and --passes-grid settings; "
        "write points.csv/json, pareto.csv, plots and report.md/html into -o DIR.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks (or LLMC_DEBUG=1)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", required=True, help="target name (see `llmc targets`)")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a hardware field and its values (repeatable; any key --set accepts)",
    )
    p.add_argument(
        "--passes-grid",
        metavar='"SPEC;SPEC;..."',
        default=None,
        help="compression settings, ';'-separated ('dense' = no passes)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed override: a spec key (bandwidth_gbs, mem_gb, peak_tflops.<dtype>, power_w, "
        "price_usd) or an FPGA board field (dsp.total, hbm.bandwidth_gbs, ...)",
    )
    p.add_argument(
        "--arch",
        metavar="FILE",
        help="target YAML: an FPGA board file, or `base: h100` + a spec: section (docs/backends.md)",
    )
    p.add_argument("--prompt", type=int_at_least(1), default=128, help="prompt tokens (128)")
    p.add_argument("--decode", type=int_at_least(0), default=512, help="generated tokens (512)")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="prompts per request (1)")
    p.add_argument(
        "--skip-rate",
        type=skip_rate_arg,
        metavar="R",
        help="ffn-skip settings: fraction of decode FFN blocks skipped",
    )
    p.add_argument(
        "--metric",
        default="decode_tokens_per_s",
        help="speed axis: decode_tokens_per_s (default), prefill_tokens_per_s, request_per_s, "
        "tokens_per_s_per_kw",
    )
    p.add_argument(
        "--quality-model",
        metavar="M",
        help="measure perplexity on M (default: the model, or tiny for architecture-only ones)",
    )
    p.add_argument("--no-quality", action="store_true", help="speed and cost only")
    p.add_argument(
        "--window", type=int_at_least(2), default=256, help="quality: tokens per window (256)"
    )
    p.add_argument(
        "--max-tokens",
        type=int_at_least(2),
        default=16384,
        help="quality: evaluate the first N held-out tokens (16384)",
    )
    p.add_argument(
        "-j", "--jobs", type=int_at_least(0), default=0, help="worker processes (0: every core)"
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--allow-pickle", action="store_true")
    p.set_defaults(func=cmd_study)

    p = add(
        "export",
        "export a (compressed) model as a Hugging Face or compressed-tensors directory, or a "
        "GGUF file",
    )
    p.add_argument("model", metavar="MODEL|OUT")
    p.add_argument(
        "--format",
        default="hf",
        help="hf (a directory of dense weights), compressed-tensors (a directory in the "
        "compressed-tensors format vLLM reads) or gguf (one file)",
    )
    p.add_argument("-o", "--out", required=True)
    p.add_argument(
        "--gguf-type",
        default=None,
        metavar="T",
        help="gguf: f32, f16 (default), q8_0 or q4_0 for every 2-D weight",
    )
    p.add_argument(
        "--gguf-exact",
        action="store_true",
        help="gguf: refuse a quantized weight whose codes do not map onto the GGUF blocks",
    )
    p.add_argument("--allow-pickle", action="store_true")
    _add_pass_args(p)
    p.set_defaults(func=cmd_export)

    p = add("inspect", "describe a model or an artifact: shapes, params by layer, files")
    p.add_argument("model", metavar="OUT|MODEL")
    p.add_argument("--allow-pickle", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = add("targets", "list targets")
    p.set_defaults(func=cmd_targets)
    p = add("passes", "list passes")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("train-tiny", help="retrain the embedded tiny model (tools/train_tiny.py)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train_tiny)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Every failure is one ``llmc: error:`` line on stderr and a non-zero status
    (with ``--json``, also one ``{"error", "kind"}`` object on stdout); ``--debug`` or
    ``LLMC_DEBUG=1`` re-raises instead, for the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in args
    debug = "--debug" in args or os.environ.get("LLMC_DEBUG", "") not in ("", "0")
    ap = build_parser()
    try:
        a = ap.parse_args(args)
    except _ArgError as e:
        return _fail(str(e), "usage", 2, want_json)
    if not getattr(a, "func", None):
        ap.print_help(sys.stderr)
        return 2
    set_quiet(bool(getattr(a, "json", False)))  # --json: no progress, whatever the terminal
    try:
        model = getattr(a, "model", None)
        if isinstance(model, str) and os.path.isdir(model):
            # refuse an unsupported architecture from config.json alone, before torch loads
            from llmc.frontends.archs import precheck_dir

            precheck_dir(model)
        return int(a.func(a) or 0)
    except KeyboardInterrupt:
        print("llmc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if debug:
            raise
        msg, kind, code = describe_failure(e)
        return _fail(msg, kind, code, want_json and getattr(a, "json", False))


def describe_failure(e: BaseException) -> tuple[str, str, int]:
    """(one-line message, kind, exit status) of an exception that reached the CLI."""
    if isinstance(e, LlmcError):
        return str(e), type(e).__name__, e.exit_code
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e) or type(e).__name__
        hint = " (disk full?)" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        return f"{where}{what}{hint}", "OSError", 1
    if isinstance(e, MemoryError):
        return "out of memory", "MemoryError", 1
    text = str(e).strip().splitlines()
    detail = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return (
        f"internal error, a bug in llmc ({detail}); rerun with --debug for the traceback",
        "InternalError",
        70,
    )


def _fail(msg: str, kind: str, code: int, as_json: bool) -> int:
    line = _one_line(msg)
    if as_json:
        sys.stdout.write(json.dumps({"error": line, "kind": kind}) + "\n")
    print(f"llmc: error: {line}", file=sys.stderr)
    return code


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
