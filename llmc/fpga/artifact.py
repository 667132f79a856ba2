"""``llmc compile MODEL --target u280|vhk158 -o OUT``: the FPGA artifact.

What the directory holds (besides the common ``manifest.json``, ``report.json``/``report.md``,
``graph.ir`` and ``params.safetensors``)::

    fpga/arch.yaml              the board description actually used (overrides applied), with sources
    fpga/memory.json            the HBM/DDR map: every region (weights, tables, KV caches, I/O) with
                                address, size and hardware bytes; per linear its format and tiles
    fpga/instructions/          one stream per length bucket (length-adaptive compilation):
        prefill_cCC.bin         prompt chunk CC (tokens [CC*C, (CC+1)*C), C = prefill_bucket)
        decode_tTTTT.bin        a decode step whose attention sees at most TTTT tokens
        psegS_cCC.bin           token pruning (llmc.fpga.prune): segment S's layers, chunk CC
        pselK_nNN.bin           token pruning: top-k of pruning point K over NN chunks of rows
        index.json              bucket -> file, instructions, bytes, sha256; storage totals
    fpga/hbm.bin                the initial HBM image (packed weights, tables); only for models
                                with real weights
    fpga/sim.json               the cycle-level simulation of the default run (``--prefill`` /
                                ``--decode`` of ``llmc simulate``: 128 + 512 tokens, clipped to
                                ``max_tokens``)
    fpga/hls/                   the HLS C++ project (:mod:`llmc.fpga.hls`), with self-checking
                                C-simulation vectors for models small enough to run bit-accurately

Streams are written for every bucket up to ``max_tokens``: the device keeps them all, which is
what the instruction-storage figures of the report count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmc.errors import TargetError
from llmc.fpga.arch import FpgaArch
from llmc.fpga.program import Program, build_program
from llmc.ir.graph import Graph
from llmc.ir.structure import is_lm

# Functional-simulation vectors go into the HLS project when the HBM image is at most this big.
VECTOR_LIMIT_BYTES = 64 * 2**20
VECTOR_PROMPT_TOKENS = 20
VECTOR_DECODE_STEPS = 3


def compile_for_target(
    graph: Graph, target: Any, tmp: Path, report: dict[str, Any]
) -> dict[str, Any]:
    """The ``fpga`` backend of :func:`llmc.compile.compile_model`."""
    from llmc.artifact import write_graph

    arch: FpgaArch = target.extra["arch"]
    write_graph(graph, tmp)
    info = compile_artifact(graph, arch, tmp / "fpga")
    report["fpga"] = info["summary"]
    return {"runtime": "flightllm", "arch": arch.name, "fpga": info["manifest"]}


def compile_artifact(
    graph: Graph,
    arch: FpgaArch,
    out_dir: str | Path,
    *,
    prefill: int = 128,
    decode: int = 512,
    hls: bool = True,
    vectors: bool | None = None,
) -> dict[str, Any]:
    """Write the FPGA files into ``out_dir`` (see the module docstring). ``vectors`` adds HLS
    C-simulation vectors (default: when the model has real weights and a small HBM image).

    Returns ``{"summary": ..., "manifest": ...}``: the simulation summary for the report and
    the file list for the manifest.
    """
    from llmc.fpga.sim import memory_summary, simulate

    if not is_lm(graph):
        raise TargetError(
            f"{arch.name}: the FPGA target runs language models only (inputs input_ids, "
            f"positions, ...); graph @{graph.name} takes "
            f"{', '.join(v.name for v in graph.inputs)}: compile it for ref or cpu"
        )
    out = Path(out_dir)
    (out / "instructions").mkdir(parents=True, exist_ok=True)
    prog = build_program(graph, arch)
    (out / "arch.yaml").write_text(_arch_yaml(arch))
    (out / "memory.json").write_text(json.dumps(memory_map(prog), indent=1) + "\n")
    index = write_streams(prog, out / "instructions")
    real = not any(p.is_meta for p in graph.params.values())
    files = ["arch.yaml", "memory.json", "instructions/index.json"]
    if real:
        img = prog.hbm_image()
        img.tofile(out / "hbm.bin")
        files.append("hbm.bin")
    n_pre = max(1, min(prefill, arch.max_tokens - 1))
    n_dec = max(0, min(decode, arch.max_tokens - n_pre))
    rep = simulate(prog, arch, n_pre, n_dec)
    (out / "sim.json").write_text(rep.to_json(indent=1) + "\n")
    files.append("sim.json")
    hls_info: dict[str, Any] = {}
    if hls:
        from llmc.fpga import hls as hls_mod
        from llmc.fpga.hls_vectors import make_vectors

        want = real and prog.hbm_bytes <= VECTOR_LIMIT_BYTES if vectors is None else vectors
        vec = None
        if want:
            n = min(VECTOR_PROMPT_TOKENS, arch.max_tokens - VECTOR_DECODE_STEPS)
            prompt = (np.arange(n) * 7 + 3) % int(graph.meta.get("vocab_size", 256))
            vec = make_vectors(prog, prompt, VECTOR_DECODE_STEPS)
        hls_info = hls_mod.emit_project(prog, out / "hls", vectors=vec)
        files += [f"hls/{f}" for f in hls_info.get("files", [])]
    summary = {
        "arch": arch.name,
        "prefill_tokens": rep.prefill_tokens,
        "decode_tokens": rep.decode_tokens,
        "prefill_ms": rep.prefill_ms,
        "decode_ms_per_token": rep.decode_ms_per_token,
        "decode_tokens_per_s": rep.decode_tokens_per_s,
        "dsp_utilization": rep.dsp_utilization,
        "hbm_bandwidth_utilization": rep.hbm_bandwidth_utilization,
        "instruction_bytes": index["bucketed_bytes"],
        "streams": index["streams"],
        "memory": memory_summary(prog),
        "hls": {k: v for k, v in hls_info.items() if k != "files"},
        "notes": rep.notes,
    }
    return {"summary": summary, "manifest": {"files": files, "streams": index["streams"]}}


def write_streams(prog: Program, out: Path) -> dict[str, Any]:
    """Encode every bucket's stream into ``out`` and write ``index.json``."""
    entries = []
    total = 0
    for stage, b in prog.all_buckets():
        s = prog.stream(stage, b)
        raw = s.encode()
        name = f"prefill_c{b:02d}.bin" if stage == "prefill" else f"decode_t{b:04d}.bin"
        if stage not in ("prefill", "decode"):  # token pruning: pseg{s}_cCC, psel{k}_nNN
            name = f"{stage}_{'c' if stage.startswith('pseg') else 'n'}{b:02d}.bin"
        (out / name).write_bytes(raw)
        total += len(raw)
        entries.append(
            {
                "stage": stage,
                "bucket": b,
                "file": name,
                "instructions": len(s.instrs),
                "bytes": len(raw),
                "act_peak_words": s.act_peak,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
        # a written stream is not needed again: keep the cache small for 7B-sized models
        prog._streams.pop((stage, b), None)
    a = prog.arch
    index = {
        "prefill_bucket": a.prefill_bucket,
        "decode_bucket": a.decode_bucket,
        "max_tokens": a.max_tokens,
        "streams": len(entries),
        "bucketed_bytes": total,
        "entries": entries,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def memory_map(prog: Program) -> dict[str, Any]:
    """Regions and linears of a program, for ``memory.json``."""
    return {
        "hbm_image_bytes": prog.hbm_bytes,
        "regions": [
            {
                "name": r.name,
                "kind": r.kind,
                "mem": r.mem,
                "addr": r.addr,
                "size": r.size,
                "hw_bytes": r.hw_bytes,
            }
            for r in prog.regions.values()
        ],
        "linears": {
            name: {
                "format": lin.fmt.describe(),
                "out_features": lin.n,
                "in_features": lin.k,
                "tile_rows": lin.tile_rows,
                "tiles": len(lin.tiles),
                "addr": lin.region.addr if lin.region is not None else None,
            }
            for name, lin in prog.linears.items()
        },
    }


def _arch_yaml(arch: FpgaArch) -> str:
    """The resolved description in the same ``{value, source}`` form as the built-in files."""
    nested: dict[str, Any] = {"name": arch.name}
    for key, entry in arch.to_dict().items():
        if key == "name":
            continue
        parts = key.split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = entry
    return yaml.safe_dump(nested, sort_keys=False, width=200)
