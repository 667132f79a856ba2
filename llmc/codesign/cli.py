"""``llmc roofline MODEL --target T [--passes ...] [--batch B] [--prompt N] [--decode M]
[--kv-bits 16|8|4] [--act-bits 16|8|4] [--skip-rate R] [--memory-level auto|dram|llc]
[--efficiency FILE] [--csv FILE]
[--plot FILE] [--json]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmc.errors import LlmcError


def roofline_command(a: argparse.Namespace) -> int:
    from llmc.codesign.roofline import (
        Scenario,
        analyze,
        calibrate,
        load_efficiency,
        simulator_summary,
        write_outputs,
    )
    from llmc.compile import load, run_passes
    from llmc.console import emit_json, pass_options, stage
    from llmc.targets import configure_target, get_target, resolve_spec

    t0 = time.perf_counter()
    scenario = Scenario(
        batch=a.batch,
        prompt=a.prompt,
        decode=a.decode,
        kv_bits=a.kv_bits,
        act_bits=a.act_bits,
        skip_rate=a.skip_rate,
    )
    tgt = get_target(a.target)
    if a.arch or a.set:
        tgt = configure_target(tgt, {"arch": a.arch, "set": a.set})
    spec = resolve_spec(tgt)
    if spec is None:
        raise LlmcError(f"--target {tgt.name}: no hardware spec to draw a roofline against")
    for path, flag in ((a.csv, "--csv"), (a.plot, "--plot")):
        if path and path.endswith("/"):
            raise LlmcError(f"{flag} {path}: give a file name, not a folder")
    efficiency = load_efficiency(a.efficiency) if a.efficiency else None
    loaded = load(a.model, allow_pickle=a.allow_pickle, dtype=a.dtype)
    graph = loaded.graph
    passes = run_passes(graph, a.passes, a.recipe, target=tgt.name, options=pass_options(a))
    with stage("analysing"):
        rep = analyze(
            graph,
            spec,
            scenario,
            model=loaded.name,
            target=tgt.name,
            memory_level=getattr(a, "memory_level", "auto"),
        )
    if efficiency is not None:
        calibrate(rep, graph, efficiency)
    if tgt.kind == "fpga":
        if scenario.batch != 1:
            rep.notes.append(
                "the FPGA simulator runs batch 1: no simulator figures for --batch > 1"
            )
        else:
            from llmc.fpga.arch import load_arch

            arch = tgt.extra.get("arch") or load_arch(tgt.name)
            with stage(f"simulating on {arch.name}"):
                rep.simulator = simulator_summary(graph, arch, scenario)
    written = write_outputs(rep, csv_path=a.csv, plot_path=a.plot)
    if a.json:
        out = rep.to_dict()
        out["passes"] = passes
        out["files"] = written
        out["seconds"] = time.perf_counter() - t0
        emit_json(out)
        return 0
    print(rep.table())
    for w in written:
        print(f"wrote    {w}")
    return 0


def study_command(a: argparse.Namespace) -> int:
    from llmc.codesign.study import Study, parse_grid, parse_vary, run_study
    from llmc.console import emit_json, progress, status

    study = Study(
        model=a.model,
        target=a.target,
        axes=tuple(parse_vary(v) for v in a.vary),
        grid=parse_grid(a.passes_grid),
        arch=a.arch,
        sets=tuple(a.set),
        prompt=a.prompt,
        decode=a.decode,
        batch=a.batch,
        skip_rate=a.skip_rate,
        metric=a.metric,
        quality=not a.no_quality,
        quality_model=a.quality_model,
        window=a.window,
        max_tokens=a.max_tokens,
        jobs=a.jobs,
        allow_pickle=a.allow_pickle,
    )
    n = len(study.points())
    status(f"study: {n} points ({len(study.grid)} settings) on {a.target} ...")
    with progress(n, "points") as bar:
        res = run_study(study, a.out, progress=bar.update)
    feasible = sum(1 for r in res.rows if r["feasible"])
    if a.json:
        emit_json(
            {
                "out": a.out,
                "points": len(res.rows),
                "feasible": feasible,
                "pareto": res.pareto,
                "quality": res.quality,
                "seconds": res.seconds,
                "files": res.files,
            }
        )
        return 0
    m = study.metric
    print(
        f"{len(res.rows)} points ({len(res.rows) - feasible} infeasible) in "
        f"{res.seconds['total']:.1f} s; Pareto front:"
    )
    for r in res.pareto[:12]:
        hw = ", ".join(f"{ax.key}={r.get('hw.' + ax.key)}" for ax in study.axes)
        ppl = r.get("perplexity")
        q = f", ppl {ppl:.3f}" if isinstance(ppl, float) and ppl == ppl else ""
        print(f"  {r['passes']:32s} {hw:40s} {r[m]:10.2f} {m}{q}")
    print(f"wrote {a.out}/: " + ", ".join(Path(f).name for f in res.files))
    return 0
