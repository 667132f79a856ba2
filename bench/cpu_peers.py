"""llmc against its CPU peers: llama.cpp, ONNX Runtime and Hugging Face eager, same weights, same run.

Usage::

    python bench/cpu_peers.py                       # all pairs, writes bench/cpu_peers.json
    python bench/cpu_peers.py --rounds 5 --only f32,q4 -o /tmp/peers.json
    python bench/cpu_peers.py --quick               # tiny model, few tokens (a smoke run)

What it does:

1. **Peers' environment.** A separate virtual environment (``--peers-venv``, default
   ``bench/.peers-venv``, git-ignored; never the project's ``.venv``) is created when missing, with
   ``torch==2.13.0`` (the CPU wheel from ``PIP_FIND_LINKS``), ``transformers``, ``onnxruntime``,
   ``onnx``, ``onnxscript``, ``gguf`` and ``llama-cpp-python`` built from source with
   ``CMAKE_ARGS=-DGGML_NATIVE=ON`` (the host's AVX-512/VNNI, as a user's own build) and AMX
   switched off (``CFLAGS``/``CXXFLAGS`` ``-mno-amx-*``): ggml's AMX matmul dies with SIGILL on the
   first tile instruction in its OpenMP workers on Xeons whose kernel enables tile data per thread
   (llama.cpp PR #26954, open), which is every q8_0/q4_0 call on an AMX host; without AMX ggml keeps
   its AVX-512 VNNI and weight-repacking (``REPACK``) kernels. Once built it is reused;
   ``.peers-ready`` in it records the versions and the build flags, and a venv built with other
   flags gets llama-cpp-python rebuilt.
2. **One model.** A Llama-architecture model with random weights (``torch.manual_seed(0)``,
   ``LlamaForCausalLM``'s own initialisation), GPT-2-small size: hidden 768, 12 layers, 12 heads
   (no GQA), FFN 2048, vocabulary 32000, untied head (134 M parameters, 110 M outside the
   embedding). ``--quick``: hidden 64, 2 layers, FFN 128, vocabulary 512. Written once as a
   Hugging Face directory, ``WORK/hf``.
3. **Every engine gets those weights.** llmc compiles ``WORK/hf`` for ``--target cpu`` at each
   setting; the GGUF files are written by ``llmc export --format gguf`` from the same passes, so
   llama.cpp's q8_0/q4_0 blocks hold llmc's own RTN codes and scales (symmetric, group 32: the
   export maps them unchanged, ``--gguf-exact``), and the LM head is quantized on both sides
   (``exclude=model.embed_tokens`` replaces llmc's default ``exclude=lm_head``); the embedding
   stays f32 in llmc and is quantized by the export for llama.cpp (one row is read per token). ONNX
   Runtime runs ``torch.onnx.export`` of the HF model with its KV cache as graph inputs/outputs.
4. **Timing.** Each engine runs in its own long-lived worker process (this file with ``--worker``;
   llmc's in the project's Python, the peers' in the peers' venv), loaded and warmed up (one short
   generation) before the first round. Every round then runs each engine of a pair once, in turn
   (A B C A B C ...): batch 1, a ``--prompt``-token prompt (fixed random ids) prefilled in one
   call, then ``--tokens`` greedy tokens, one call per token. Counted the same way for all: the
   wall time of each forward/eval call only (argmax excluded), so decode tokens/s is
   ``(tokens - 1) / sum(step times)`` (the first new token comes from the prefill's logits) and
   prefill tokens/s is ``prompt / prefill time``. llama.cpp is driven through ``Llama.eval`` with
   ``n_threads = n_threads_batch = --threads`` and ``n_batch >= prompt``; its own perf counters
   (``llama_perf_context``) are recorded beside the wall times as a cross-check. llmc runs with
   ``TVM_NUM_THREADS``, torch/HF with ``torch.set_num_threads``, ORT with
   ``intra_op_num_threads`` (all ``--threads``).
5. **Roofline.** Weight bytes read per decode token, the embedding table counted as the one row
   a token reads (llmc: the artifact's weights in their storage format, ``Param.storage_bytes``:
   codes, scales, N:M values and 2-bit indices; llama.cpp: the GGUF's tensor bytes; HF/ORT: the
   safetensors' bytes), divided by the time per token, as % of
   the read bandwidth measured in the same run (``llmc.targets.host.measure_read_bandwidth``, on
   ``--threads`` threads), before and after the pairs (``pct_of_roofline``: DRAM, a 256 MiB
   working set). Each engine also gets ``pct_of_llc_roofline``, the same over the bandwidth the
   last-level cache allows: the LLC's read bandwidth where those bytes fit in it, since weights
   that stay cached between tokens are read from the cache, not DRAM (``roofline_level``
   ``LLC``); where they do not, the LLC's share of them at its bandwidth and the rest at DRAM's
   (``LLC+DRAM``: the cache keeps about its effective size of a sweep repeated every token, which
   is why the DRAM-only % passes 100 on the Xeon host). The LLC is probed the same way in the same run (``llmc.targets.host.probe_llc``):
   working sets from twice the threads' L2 up to the size sysfs reports, keeping the part that
   reads faster than DRAM (in a VM the reported LLC is the socket's, shared with other tenants;
   on the 2-vCPU Xeon, 300 MiB reported, about 32-48 MiB of it seen).

The JSON has every sample, medians and spread (max-min over median), the load average before and
after each pair, the machine (CPU model, AVX2/AVX-512/VNNI flags), llama.cpp's version and build
flags, the date, the command and the commit. Pairs and their targets (issue 14's "Done when"):
``f32`` llmc >= 1.1x llama.cpp f32 (ORT and HF eager reported beside it), ``q8`` llmc
``rtn:bits=8:group=32`` >= 1.1x llama.cpp q8_0, ``q4`` llmc ``rtn:bits=4:group=32`` (and
``group=128``) >= 1.1x llama.cpp q4_0, each also with ``act_bits=8`` (int8 activations per 32,
the arithmetic llama.cpp's q8_0 activations do: the ``-a8`` engines), ``w8a8`` llmc ``w8a8`` >= llmc ``rtn:bits=8`` (per channel:
the same bytes), ``nm`` llmc ``magnitude:pattern=2:4`` >= 1.3x llmc dense.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cpu_name, git, load_average  # noqa: E402

DEFAULT_VENV = ROOT / "bench" / ".peers-venv"
TORCH_PIN = "torch==2.13.0"
PEER_PACKAGES = ["transformers", "onnxruntime", "onnx", "onnxscript", "gguf", "numpy"]
#: llama-cpp-python's build: native ISA, AMX off (see the module docstring: ggml's AMX path
#: crashes with SIGILL on tile-data-per-thread kernels; llama.cpp PR #26954)
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CPP_BUILD = {"CMAKE_ARGS": "-DGGML_NATIVE=ON", "CFLAGS": _NO_AMX, "CXXFLAGS": _NO_AMX}

#: the model (``--quick``: the small one)
MODEL = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "intermediate_size": 2048,
    "vocab_size": 32000,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
QUICK_MODEL = {
    **MODEL,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 128,
}

_HEADQ = ":exclude=model.embed_tokens"  # quantize the LM head too, as llama.cpp's q8_0/q4_0 do
#: llmc settings: name -> pass spec ("" = none)
LLMC = {
    "llmc-f32": "",
    "llmc-rtn8-g32": "rtn:bits=8:group=32" + _HEADQ,
    "llmc-rtn4-g32": "rtn:bits=4:group=32" + _HEADQ,
    "llmc-rtn4-g128": "rtn:bits=4:group=128" + _HEADQ,
    # int8 activations per block of 32 (QuantSpec.act_bits): llama.cpp's q8_0 activations
    "llmc-rtn8-g32-a8": "rtn:bits=8:group=32:act_bits=8" + _HEADQ,
    "llmc-rtn4-g32-a8": "rtn:bits=4:group=32:act_bits=8" + _HEADQ,
    "llmc-rtn4-g128-a8": "rtn:bits=4:group=128:act_bits=8" + _HEADQ,
    # llama.cpp's block formats exactly: float16 scales per 32 weights, int8 activations per 32
    "llmc-rtn8-g32-a8-f16": "rtn:bits=8:group=32:act_bits=8:scale_dtype=f16" + _HEADQ,
    "llmc-rtn4-g32-a8-f16": "rtn:bits=4:group=32:act_bits=8:scale_dtype=f16" + _HEADQ,
    "llmc-rtn8": "rtn:bits=8:group=0",
    "llmc-w8a8": "w8a8",
    "llmc-2:4": "magnitude:pattern=2:4",
}
#: GGUF files: name -> (gguf type, llmc setting whose passes produce its weights)
GGUF = {
    "llama.cpp-f32": ("f32", "llmc-f32"),
    # float16-scale codes: the GGUF blocks hold llmc's codes and scales bit for bit
    "llama.cpp-q8_0": ("q8_0", "llmc-rtn8-g32-a8-f16"),
    "llama.cpp-q4_0": ("q4_0", "llmc-rtn4-g32-a8-f16"),
}
#: pair -> (engines, baseline, [(engine, target ratio over the baseline)])
PAIRS: dict[str, tuple[list[str], str, list[tuple[str, float]]]] = {
    "f32": (
        ["llmc-f32", "llama.cpp-f32", "ort-f32", "hf-f32"],
        "llama.cpp-f32",
        [("llmc-f32", 1.1)],
    ),
    "q8": (
        ["llmc-rtn8-g32", "llmc-rtn8-g32-a8", "llmc-rtn8-g32-a8-f16", "llama.cpp-q8_0"],
        "llama.cpp-q8_0",
        [("llmc-rtn8-g32", 1.1), ("llmc-rtn8-g32-a8", 1.1), ("llmc-rtn8-g32-a8-f16", 1.1)],
    ),
    "q4": (
        [
            "llmc-rtn4-g32",
            "llmc-rtn4-g32-a8",
            "llmc-rtn4-g32-a8-f16",
            "llmc-rtn4-g128",
            "llmc-rtn4-g128-a8",
            "llama.cpp-q4_0",
        ],
        "llama.cpp-q4_0",
        [
            ("llmc-rtn4-g32", 1.1),
            ("llmc-rtn4-g32-a8", 1.1),
            ("llmc-rtn4-g32-a8-f16", 1.1),
            ("llmc-rtn4-g128", 1.1),
            ("llmc-rtn4-g128-a8", 1.1),
        ],
    ),
    "w8a8": (["llmc-w8a8", "llmc-rtn8"], "llmc-rtn8", [("llmc-w8a8", 1.0)]),
    "nm": (["llmc-2:4", "llmc-f32"], "llmc-f32", [("llmc-2:4", 1.3)]),
}


class UsageError(Exception):
    """A bad command line: one line naming the option."""


# ---------------------------------------------------------------- pure parts (tested)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/llmc-cpu-peers", help="models and artifacts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=None, help="new tokens (default 128)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(PAIRS), help=f"pairs among {','.join(PAIRS)}")
    ap.add_argument("--quick", action="store_true", help="tiny model, 8+8 tokens, 1 round")
    ap.add_argument("--peers-venv", default=str(DEFAULT_VENV))
    ap.add_argument("-o", "--out", default=None, help="JSON (default bench/cpu_peers.json)")
    ap.add_argument(
        "--rederive",
        metavar="JSON",
        default=None,
        help="measure nothing: derive a result file's roofline fields again from its own "
        "measurements, rewrite it and print its table",
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.tokens = a.tokens or 8
        a.prompt = a.prompt or 8
        if "--rounds" not in (argv if argv is not None else sys.argv[1:]):
            a.rounds = 1
    a.tokens = 128 if a.tokens is None else a.tokens
    a.prompt = 32 if a.prompt is None else a.prompt
    if a.rounds < 1:
        raise UsageError(f"--rounds {a.rounds}: give at least 1")
    if a.tokens < 2:
        raise UsageError(f"--tokens {a.tokens}: give at least 2 (decode steps = tokens - 1)")
    if a.prompt < 1:
        raise UsageError(f"--prompt {a.prompt}: give at least 1")
    if a.threads < 1:
        raise UsageError(f"--threads {a.threads}: give at least 1")
    pairs = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in pairs if p not in PAIRS]
    if not pairs or bad:
        raise UsageError(
            f"--only: unknown pair {bad[0] if bad else '(none)'!r} (known: {', '.join(PAIRS)})"
        )
    a.pairs = pairs
    a.model = QUICK_MODEL if a.quick else MODEL
    if a.out is None:
        a.out = str(ROOT / "bench" / ("cpu_peers_quick.json" if a.quick else "cpu_peers.json"))
    return a


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and spread (max - min over the median, %) of positive samples."""
    if not samples:
        raise ValueError("no samples")
    med = statistics.median(samples)
    return {
        "samples": [round(s, 2) for s in samples],
        "median": round(med, 2),
        "min": round(min(samples), 2),
        "max": round(max(samples), 2),
        "spread_pct": round(100 * (max(samples) - min(samples)) / med, 1) if med else None,
    }


def roofline_pct(bytes_per_token: float, tokens_per_s: float, bandwidth: float) -> float:
    """% of the bandwidth roofline: the bytes a token reads, at this rate, over the bandwidth."""
    if bandwidth <= 0 or bytes_per_token <= 0 or tokens_per_s <= 0:
        raise ValueError("bytes, rate and bandwidth must be positive")
    return 100.0 * bytes_per_token * tokens_per_s / bandwidth


def decode_bytes(tensors: list[tuple[str, int, int]], embedding: str) -> int:
    """Weight bytes one decode token reads: every tensor ``(name, bytes, rows)`` whole, except the
    embedding table ``embedding``, of which one row."""
    total = 0
    for name, nbytes, rows in tensors:
        total += nbytes // max(rows, 1) if name == embedding else nbytes
    return total


def verdict(ratio: float, target: float) -> dict[str, Any]:
    """Whether ``ratio`` meets ``target``; a miss says by how much (the speed-up still needed)."""
    ok = ratio >= target
    out: dict[str, Any] = {"ratio": round(ratio, 3), "target": target, "met": ok}
    if not ok:
        out["miss_pct"] = round(100 * (target / ratio - 1), 1)
    return out


ENGINE_KEYS = {"engine", "decode_tokens_per_s", "prefill_tokens_per_s", "bytes_per_token"}
PAIR_KEYS = {"engines", "baseline", "targets", "load_average_before", "load_average_after"}
TOP_KEYS = {
    "benchmark",
    "command",
    "date",
    "commit",
    "machine",
    "model",
    "settings",
    "read_bandwidth_gbs",
    "load_average_before",
    "load_average_after",
    "pairs",
}


def check_result(doc: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or malformed part of a result document."""
    miss = TOP_KEYS - doc.keys()
    if miss:
        raise ValueError(f"result: missing {sorted(miss)}")
    for name, p in doc["pairs"].items():
        miss = PAIR_KEYS - p.keys()
        if miss:
            raise ValueError(f"pairs.{name}: missing {sorted(miss)}")
        if p["baseline"] not in p["engines"]:
            raise ValueError(f"pairs.{name}: baseline {p['baseline']!r} not among its engines")
        for e, r in p["engines"].items():
            miss = ENGINE_KEYS - r.keys()
            if miss:
                raise ValueError(f"pairs.{name}.{e}: missing {sorted(miss)}")
            for k in ("decode_tokens_per_s", "prefill_tokens_per_s"):
                if not r[k]["samples"] or r[k]["median"] <= 0:
                    raise ValueError(f"pairs.{name}.{e}.{k}: no positive samples")
            if not 0 < r["pct_of_roofline"] < 1000:
                raise ValueError(f"pairs.{name}.{e}.pct_of_roofline: {r['pct_of_roofline']}")
            llc = r.get("pct_of_llc_roofline")
            if llc is not None and not 0 < llc < 1000:
                raise ValueError(f"pairs.{name}.{e}.pct_of_llc_roofline: {llc}")
        for t in p["targets"]:
            if t["engine"] not in p["engines"] or not {"ratio", "target", "met"} <= t.keys():
                raise ValueError(f"pairs.{name}.targets: malformed {t}")


def pair_result(
    engines: dict[str, dict[str, Any]],
    baseline: str,
    targets: list[tuple[str, float]],
    bandwidth: float,
    llc: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """A pair's JSON from each engine's raw samples (``decode``, ``prefill`` tokens/s lists,
    ``bytes_per_token``, ``info``): summaries, % of roofline, ratios over the baseline and targets.
    ``llc``: ``(LLC bytes, LLC read bytes/s)``; then every engine also gets
    ``pct_of_llc_roofline``, against the LLC's bandwidth where its bytes per token fit in it
    (``roofline_level`` ``LLC``) and against the LLC's share at the LLC's bandwidth plus the rest
    at DRAM's where they do not (``LLC+DRAM``, :func:`llmc.codesign.roofline.memory_level`)."""
    from types import SimpleNamespace

    from llmc.codesign.roofline import memory_level  # not at the top: peers' workers import this

    out: dict[str, Any] = {}
    for name, e in engines.items():
        dec = summarize(e["decode"])
        out[name] = {
            "engine": e.get("info", {}),
            "decode_tokens_per_s": dec,
            "prefill_tokens_per_s": summarize(e["prefill"]),
            "bytes_per_token": e["bytes_per_token"],
            "pct_of_roofline": round(
                roofline_pct(e["bytes_per_token"], dec["median"], bandwidth), 1
            ),
            "roofline_level": "DRAM",
        }
        if llc is not None and llc[0] > 0 and llc[1] > 0 and e["bytes_per_token"] > 0:
            level, bw = memory_level(
                SimpleNamespace(llc_bytes=llc[0], llc_bandwidth=llc[1], mem_bandwidth=bandwidth),
                e["bytes_per_token"],
            )
            out[name]["roofline_level"] = level
            out[name]["pct_of_llc_roofline"] = round(
                roofline_pct(e["bytes_per_token"], dec["median"], bw), 1
            )
    base = out[baseline]["decode_tokens_per_s"]["median"]
    for r in out.values():
        r["decode_ratio_vs_baseline"] = round(r["decode_tokens_per_s"]["median"] / base, 3)
        r["prefill_ratio_vs_baseline"] = round(
            r["prefill_tokens_per_s"]["median"] / out[baseline]["prefill_tokens_per_s"]["median"], 3
        )
    tg = [
        {"engine": n, **verdict(out[n]["decode_tokens_per_s"]["median"] / base, t)}
        for n, t in targets
    ]
    return {"engines": out, "baseline": baseline, "targets": tg}


def loaded(doc: dict[str, Any], pair: dict[str, Any]) -> bool:
    """Whether a pair ran on a busy machine: a 1-minute load average above the cores plus one
    (the benchmark's own threads count) before or after it. Other runnable work preempts the
    engines unevenly (llama.cpp's OpenMP workers spin-wait at every barrier and lose most when
    descheduled), so such a pair's ratios are no verdict on the targets."""
    cores = doc.get("machine", {}).get("cores") or os.cpu_count() or 1
    la = [pair.get("load_average_before"), pair.get("load_average_after")]
    return any(x and x[0] > cores + 1 for x in la)


def rederive(doc: dict[str, Any], command: str) -> dict[str, Any]:
    """``doc`` with each engine's cache roofline fields (``roofline_level``,
    ``pct_of_llc_roofline``) derived again by today's :func:`pair_result` from the run's own
    measurements (decode rates, bytes per token, the DRAM and LLC bandwidths probed before the
    pairs, as stored: to 0.01 GB/s); every measured figure stays as it was, and ``rederived``
    records when and how."""
    bw = doc["read_bandwidth_gbs"] * 1e9
    llc = doc.get("llc") or {}
    cache = (
        float(llc.get("effective_bytes") or 0),
        float(llc.get("read_bandwidth_gbs") or 0) * 1e9,
    )
    for p in doc["pairs"].values():
        raw = {
            n: {
                "decode": r["decode_tokens_per_s"]["samples"],
                "prefill": r["prefill_tokens_per_s"]["samples"],
                "bytes_per_token": r["bytes_per_token"],
            }
            for n, r in p["engines"].items()
        }
        fresh = pair_result(raw, p["baseline"], [], bw, cache if all(cache) else None)["engines"]
        for n, r in p["engines"].items():
            r.pop("pct_of_llc_roofline", None)
            for k in ("roofline_level", "pct_of_llc_roofline"):
                if k in fresh[n]:
                    r[k] = fresh[n][k]
    doc["rederived"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD").strip(),
        "command": command,
        "fields": "roofline_level, pct_of_llc_roofline (no measurement changed)",
    }
    check_result(doc)
    return doc


def markdown_table(doc: dict[str, Any]) -> str:
    """The docs/backends.md table of a result document (targets of a :func:`loaded` pair are
    marked as no verdict)."""
    rows = [
        "| pair | engine | decode tok/s (median, spread) | prefill tok/s | MB/token | % roofline "
        "| % LLC(+DRAM) roofline | vs baseline | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pname, p in doc["pairs"].items():
        tg = {t["engine"]: t for t in p["targets"]}
        busy = loaded(doc, p)
        for e, r in p["engines"].items():
            d = r["decode_tokens_per_s"]
            t = tg.get(e)
            if t is None:
                ts = "baseline" if e == p["baseline"] else ""
            elif t["met"]:
                ts = f"≥ {t['target']}x: met"
            else:
                ts = f"≥ {t['target']}x: **missed by {t['miss_pct']}%**"
            if t is not None and busy:
                ts = f"no verdict (load {max(p['load_average_before'][0], p['load_average_after'][0])})"
            llc = r.get("pct_of_llc_roofline")
            llc_s = "—" if llc is None else f"{llc:.0f}%"
            rows.append(
                f"| {pname} | {e} | {d['median']:.1f} (±{d['spread_pct']}%) "
                f"| {r['prefill_tokens_per_s']['median']:.0f} | {r['bytes_per_token'] / 1e6:.1f} "
                f"| {r['pct_of_roofline']:.0f}% | {llc_s} | {r['decode_ratio_vs_baseline']:.2f}x "
                f"| {ts} |"
            )
    return "\n".join(rows)


# ---------------------------------------------------------------- workers (one engine each)


def _prompt_ids(n: int, vocab: int) -> list[int]:
    import random

    rng = random.Random(1234)
    return [rng.randrange(3, vocab) for _ in range(n)]


class _Engine:
    """Load once; ``run`` = prefill the prompt, then greedy decode, timing each call."""

    info: dict[str, Any] = {}

    def prefill(self, ids: list[int]) -> Any: ...
    def step(self, tok: int, pos: int) -> Any: ...

    def run(self, ids: list[int], new: int) -> dict[str, Any]:
        import numpy as np

        self.reset()
        t0 = time.perf_counter()
        logits = self.prefill(ids)
        prefill_s = time.perf_counter() - t0
        toks = [int(np.argmax(logits))]
        steps = []
        for i in range(new - 1):
            t = time.perf_counter()
            logits = self.step(toks[-1], len(ids) + i)
            steps.append(time.perf_counter() - t)
            toks.append(int(np.argmax(logits)))
        return {"prefill_s": prefill_s, "step_s": steps, "tokens": toks, **self.extra()}

    def reset(self) -> None: ...

    def extra(self) -> dict[str, Any]:
        return {}


class LlmcEngine(_Engine):
    def __init__(self, path: str, threads: int) -> None:
        import torch

        from llmc.runtime.tvm_runner import load

        torch.set_num_threads(threads)
        self.lm = load(path)
        self.torch = torch
        self.info = {"runtime": "llmc TVM CPU artifact (llmc.runtime.tvm_runner)", "path": path}

    def reset(self) -> None:
        self.past = self.lm.empty_past(1)

    def prefill(self, ids):
        t = self.torch
        x = t.tensor([ids], dtype=t.int64)
        logits, self.past = self.lm.forward(x, t.arange(len(ids))[None], self.past)
        return logits[0, -1].float().numpy()

    def step(self, tok, pos):
        t = self.torch
        logits, self.past = self.lm.forward(
            t.tensor([[tok]], dtype=t.int64), t.tensor([[pos]], dtype=t.int64), self.past
        )
        return logits[0, -1].float().numpy()


class LlamaCppEngine(_Engine):
    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=path,
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_batch=max(512, n_ctx),
            n_ubatch=max(512, n_ctx),
            logits_all=False,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        sysinfo = llama_cpp.llama_print_system_info()
        self.info = {
            "runtime": "llama.cpp via llama-cpp-python Llama.eval",
            "llama_cpp_python": llama_cpp.__version__,
            "system_info": sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo),
            "path": path,
        }

    def reset(self) -> None:
        self.llm.reset()
        self.llm._ctx.kv_cache_clear() if hasattr(self.llm._ctx, "kv_cache_clear") else None
        try:
            self.lc.llama_perf_context_reset(self.llm._ctx.ctx)
        except Exception:  # noqa: BLE001 - perf counters are a cross-check only
            pass

    def _last(self):
        # with logits_all=False, Llama.eval keeps no scores: read the last token's logits
        import numpy as np

        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids):
        self.llm.eval(ids)
        return self._last()

    def step(self, tok, pos):
        self.llm.eval([tok])
        return self._last()

    def extra(self) -> dict[str, Any]:
        try:
            p = self.lc.llama_perf_context(self.llm._ctx.ctx)
            return {
                "llama_perf": {
                    "t_p_eval_ms": p.t_p_eval_ms,
                    "n_p_eval": p.n_p_eval,
                    "t_eval_ms": p.t_eval_ms,
                    "n_eval": p.n_eval,
                }
            }
        except Exception as e:  # noqa: BLE001
            return {"llama_perf": f"unavailable: {type(e).__name__}"}


class HfEngine(_Engine):
    def __init__(self, path: str, threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        self.m = transformers.LlamaForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self.info = {
            "runtime": "transformers LlamaForCausalLM, eager attention, DynamicCache",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def reset(self) -> None:
        from transformers import DynamicCache

        self.past = DynamicCache()

    def _fwd(self, ids):
        with self.torch.inference_mode():
            o = self.m(
                input_ids=self.torch.tensor([ids]), past_key_values=self.past, use_cache=True
            )
        self.past = o.past_key_values
        return o.logits[0, -1].numpy()

    def prefill(self, ids):
        return self._fwd(ids)

    def step(self, tok, pos):
        return self._fwd([tok])


class OrtEngine(_Engine):
    def __init__(self, path: str, threads: int, layers: int, kv_shape: tuple[int, int]) -> None:
        import numpy as np
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.np, self.layers, self.kv_shape = np, layers, kv_shape
        self.outs = [o.name for o in self.sess.get_outputs()]
        self.info = {
            "runtime": "onnxruntime CPUExecutionProvider, KV cache as graph I/O",
            "onnxruntime": ort.__version__,
            "path": path,
        }

    def reset(self) -> None:
        h, d = self.kv_shape
        z = self.np.zeros((1, h, 0, d), self.np.float32)
        self.past = [z] * (2 * self.layers)

    def _fwd(self, ids, start):
        np = self.np
        feed = {
            "input_ids": np.array([ids], np.int64),
            "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None],
        }
        for i in range(self.layers):
            feed[f"past_key_{i}"] = self.past[2 * i]
            feed[f"past_value_{i}"] = self.past[2 * i + 1]
        res = self.sess.run(self.outs, feed)
        self.past = res[1:]
        return res[0][0, -1]

    def prefill(self, ids):
        return self._fwd(ids, 0)

    def step(self, tok, pos):
        return self._fwd([tok], pos)


def worker(argv: list[str]) -> int:
    """``--worker KIND PATH THREADS PROMPT TOKENS VOCAB [LAYERS HEADS HEAD_DIM]``: load, warm up,
    say ``ready``; then per ``run`` line on stdin one timed generation as a JSON line."""
    kind, path = argv[0], argv[1]
    threads, prompt, tokens, vocab = (int(x) for x in argv[2:6])
    if kind == "llmc":
        eng: _Engine = LlmcEngine(path, threads)
    elif kind == "llama.cpp":
        eng = LlamaCppEngine(path, threads, prompt + tokens + 8)
    elif kind == "hf":
        eng = HfEngine(path, threads)
    elif kind == "ort":
        eng = OrtEngine(path, threads, int(argv[6]), (int(argv[7]), int(argv[8])))
    else:
        raise SystemExit(f"--worker: unknown engine {kind!r}")
    ids = _prompt_ids(prompt, vocab)
    eng.run(ids, min(tokens, 8))  # warm-up
    print(json.dumps({"ready": True, "info": eng.info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps(eng.run(ids, tokens)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # a runtime's thread pool can hold the interpreter's exit


class Worker:
    """A worker subprocess (see :func:`worker`)."""

    def __init__(self, python: str, args: list[str], env: dict[str, str]) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--worker", *args]
        self.cmd = cmd
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.info: dict[str, Any] = {}

    def wait_ready(self) -> None:
        """Workers load and warm up in parallel; this waits for one's ``ready`` line."""
        self.info = self._read()["info"]

    def _read(self) -> dict[str, Any]:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            raise SystemExit(f"worker failed (exit {self.p.returncode}): {shlex.join(self.cmd)}")
        return json.loads(line)

    def run(self) -> dict[str, Any]:
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# ---------------------------------------------------------------- preparation


def peers_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_peers_venv(venv: Path) -> dict[str, Any]:
    """Create the peers' venv when it lacks ``.peers-ready``; return the recorded versions."""
    ready = venv / ".peers-ready"
    if ready.is_file():
        vers = json.loads(ready.read_text())
        if vers.get("llama_cpp_build") == LLAMA_CPP_BUILD:
            return vers
    project = (ROOT / ".venv").resolve()
    if venv.resolve() == project or project in venv.resolve().parents:
        raise UsageError(f"--peers-venv {venv}: never the project's .venv")
    py = peers_python(venv)
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([str(py), "-m", "ensurepip", "--upgrade"], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    print(f"peers venv {venv}: installing torch, transformers, onnxruntime ...", file=sys.stderr)
    subprocess.run([*pip, TORCH_PIN, *PEER_PACKAGES], check=True)
    env = {**os.environ, **LLAMA_CPP_BUILD}
    print(f"building llama-cpp-python ({LLAMA_CPP_BUILD}; minutes)", file=sys.stderr)
    subprocess.run(
        [*pip, "--no-cache-dir", "--force-reinstall", "--no-deps", "llama-cpp-python"],
        check=True,
        env=env,
    )
    subprocess.run([*pip, "llama-cpp-python"], check=True)  # its dependencies, if new
    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
        "['torch','transformers','onnxruntime','onnx','gguf','llama_cpp_python','numpy']}))"
    )
    vers = json.loads(
        subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout
    )
    vers["llama_cpp_cmake_args"] = LLAMA_CPP_BUILD["CMAKE_ARGS"]
    vers["llama_cpp_build"] = LLAMA_CPP_BUILD
    ready.write_text(json.dumps(vers, indent=1) + "\n")
    return vers


_HF_CODE = """
import json, sys, torch, transformers
cfg = transformers.LlamaConfig(**json.loads(sys.argv[1]))
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).eval().save_pretrained(sys.argv[2])
"""


def hf_dir(work: Path, model: dict[str, Any]) -> Path:
    d = work / "hf"
    cfg_file = work / "model.json"
    if (d / "model.safetensors").is_file() and cfg_file.is_file():
        if json.loads(cfg_file.read_text()) == model:
            return d
        raise UsageError(f"--work {work}: holds another model ({cfg_file}); use another --work")
    subprocess.run([sys.executable, "-c", _HF_CODE, json.dumps(model), str(d)], check=True)
    cfg_file.write_text(json.dumps(model))
    return d


def _llmc(*args: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("llmc")
    cmd = [str(exe), *args, "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)  # this checkout's llmc
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def code_stamp() -> str:
    """The git tree of llmc/ plus a hash of its uncommitted changes: an artifact compiled by other
    code (faster kernels merged since) is rebuilt, not reused."""
    import hashlib

    diff = git("diff", "HEAD", "--", "llmc")
    tree = git("rev-parse", "HEAD:llmc").strip()
    return f"{tree}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def build_llmc(work: Path, src: Path, name: str) -> Path:
    import shutil

    art = work / name.replace(":", "_")
    stamp = art / ".llmc-code"
    if (art / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == code_stamp():
        return art
    if art.exists():
        shutil.rmtree(art)
    t0 = time.perf_counter()
    args = ["compile", str(src), "--target", "cpu", "-o", str(art)]
    if LLMC[name]:
        args += ["--passes", LLMC[name]]
    _llmc(*args)
    stamp.write_text(code_stamp())
    print(f"compiled {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return art


def build_gguf(work: Path, src: Path, name: str) -> Path:
    gtype, setting = GGUF[name]
    out = work / f"model.{gtype}.gguf"
    if not out.is_file():
        args = ["export", str(src), "--format", "gguf", "--gguf-type", gtype, "-o", str(out)]
        if LLMC[setting]:
            args += ["--passes", LLMC[setting], "--gguf-exact"]
        _llmc(*args)
    return out


_ONNX_CODE = r"""
import sys, torch, transformers
from transformers import DynamicCache
src, out = sys.argv[1], sys.argv[2]
m = transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
L = m.config.num_hidden_layers
H = m.config.num_key_value_heads
D = m.config.hidden_size // m.config.num_attention_heads

class Wrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
    def forward(self, input_ids, position_ids, *past):
        cache = DynamicCache()
        for i in range(L):
            cache.update(past[2 * i], past[2 * i + 1], i)
        o = self.m(input_ids=input_ids, position_ids=position_ids, past_key_values=cache,
                   use_cache=True)
        flat = []
        for i in range(L):
            lay = o.past_key_values.layers[i]
            flat += [lay.keys, lay.values]
        return (o.logits, *flat)

ids = torch.tensor([[5, 6, 7]])
pos = torch.tensor([[4, 5, 6]])
past = [torch.randn(1, H, 4, D) for _ in range(2 * L)]
names_in = ["input_ids", "position_ids"] + [f"past_{kv}_{i}" for i in range(L) for kv in ("key", "value")]
names_out = ["logits"] + [f"present_{kv}_{i}" for i in range(L) for kv in ("key", "value")]
dyn = {"input_ids": {1: "q"}, "position_ids": {1: "q"}, "logits": {1: "q"}}
for n in names_in[2:]:
    dyn[n] = {2: "past"}
for n in names_out[1:]:
    dyn[n] = {2: "total"}
with torch.no_grad():
    torch.onnx.export(Wrap(m), (ids, pos, *past), out, input_names=names_in,
                      output_names=names_out, dynamic_axes=dyn, opset_version=17, dynamo=False)
"""


def build_onnx(work: Path, src: Path, venv: Path) -> Path:
    out = work / "model.onnx"
    if not out.is_file():
        tmp = work / "model.onnx.tmp"
        subprocess.run([str(peers_python(venv)), "-c", _ONNX_CODE, str(src), str(tmp)], check=True)
        for f in work.glob("model.onnx.tmp*"):
            f.rename(work / f.name.replace("model.onnx.tmp", "model.onnx"))
    return out


def gguf_bytes(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    return decode_bytes(
        [(t.name, int(t.n_bytes), int(t.shape[-1]) if len(t.shape) > 1 else 1) for t in r.tensors],
        "token_embd.weight",
    )


def hf_bytes(src: Path) -> int:
    from safetensors import safe_open

    ts = []
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_slice(k)
            shape = t.get_shape()
            n = 1
            for s in shape:
                n *= s
            ts.append((k, 4 * n, shape[0] if len(shape) > 1 else 1))
    return decode_bytes(ts, "model.embed_tokens.weight")


def llmc_bytes(art: Path) -> int:
    """The artifact's weights in their storage format (``Param.storage_bytes``: codes, scales,
    N:M values and indices), the embedding counted as one row, as :func:`decode_bytes`."""
    from llmc.compile import load

    g = load(str(art)).graph
    ts = [
        (n, int(p.storage_bytes()), int(p.type.shape[0]) if len(p.type.shape) > 1 else 1)
        for n, p in g.params.items()
    ]
    return decode_bytes(ts, "model.embed_tokens.weight")


def machine() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        cpu_name(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": {
            f: f in flags
            for f in (
                "avx2",
                "fma",
                "avx512f",
                "avx512bw",
                "avx512_vnni",
                "avx_vnni",
                "avx512_bf16",
            )
        },
    }


# ---------------------------------------------------------------- main


def start_worker(name: str, a: argparse.Namespace, paths: dict[str, Path], venv: Path) -> Worker:
    m = a.model
    base = [str(a.threads), str(a.prompt), str(a.tokens), str(m["vocab_size"])]
    env = {**os.environ, "TVM_NUM_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads)}
    if name.startswith("llmc-"):
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return Worker(sys.executable, ["llmc", str(paths[name]), *base], env)
    env.pop("PYTHONPATH", None)
    py = str(peers_python(venv))
    if name.startswith("llama.cpp-"):
        return Worker(py, ["llama.cpp", str(paths[name]), *base], env)
    if name == "hf-f32":
        return Worker(py, ["hf", str(paths["hf"]), *base], env)
    hd = m["hidden_size"] // m["num_attention_heads"]
    kv = [str(m["num_hidden_layers"]), str(m["num_key_value_heads"]), str(hd)]
    return Worker(py, ["ort", str(paths["onnx"]), *base, *kv], env)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    try:
        a = parse_args(argv)
    except UsageError as e:
        print(f"cpu_peers.py: {e}", file=sys.stderr)
        return 2
    if a.rederive:
        path = Path(a.rederive)
        try:
            doc = rederive(
                json.loads(path.read_text()), f"python bench/cpu_peers.py --rederive {path}"
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"cpu_peers.py: --rederive {path}: {e}", file=sys.stderr)
            return 2
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
        print(markdown_table(doc))
        return 0
    work = Path(a.work)
    venv = Path(a.peers_venv)
    engines = sorted({e for p in a.pairs for e in PAIRS[p][0]})
    need_peers = any(not e.startswith("llmc-") for e in engines)
    try:
        versions = ensure_peers_venv(venv) if need_peers else {}
        work.mkdir(parents=True, exist_ok=True)
        src = hf_dir(work, a.model)
    except UsageError as e:
        print(f"cpu_peers.py: {e}", file=sys.stderr)
        return 2
    paths: dict[str, Path] = {"hf": src}
    nbytes: dict[str, int] = {}
    for e in engines:
        if e.startswith("llmc-"):
            paths[e] = build_llmc(work, src, e)
            nbytes[e] = llmc_bytes(paths[e])
        elif e.startswith("llama.cpp-"):
            paths[e] = build_gguf(work, src, e)
            nbytes[e] = gguf_bytes(paths[e])
        elif e == "ort-f32":
            paths["onnx"] = build_onnx(work, src, venv)
            nbytes[e] = hf_bytes(src)
        else:
            nbytes[e] = hf_bytes(src)
    from llmc.targets.host import measure_read_bandwidth, probe_llc

    load_before = load_average()
    bw_before = measure_read_bandwidth(a.threads)
    llc_probe = probe_llc(a.threads, bw_before)  # the part of the LLC this machine gets
    llc_bytes = float(llc_probe["effective_bytes"])
    llc_before = float(llc_probe["read_bytes_per_s"])
    pairs_out: dict[str, Any] = {}
    cmd = sys.argv if argv is None else ["bench/cpu_peers.py", *argv]

    def write(
        pairs: dict[str, Any], bw_after: float | None, complete: bool, llc_after: float = 0.0
    ) -> dict[str, Any]:
        """The result so far (after every pair: a cut run still leaves its finished pairs)."""
        doc = {
            "benchmark": "llmc vs llama.cpp / ONNX Runtime / HF eager, CPU decode and prefill, "
            "same random-weight Llama model, interleaved rounds in warm worker processes",
            "complete": complete,
            "command": f"python {shlex.join(cmd)}",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD").strip(),
            "machine": machine(),
            "model": {
                "architecture": "LlamaForCausalLM",
                "init": "torch.manual_seed(0)",
                **a.model,
            },
            "settings": {
                "batch": 1,
                "prompt_tokens": a.prompt,
                "new_tokens": a.tokens,
                "threads": a.threads,
                "rounds": a.rounds,
                "timing": "wall time of each forward/eval call only; decode tok/s = "
                "(new - 1) / sum(step times), prefill tok/s = prompt / prefill time",
            },
            "peers": versions,
            "read_bandwidth_gbs": round(bw_before / 1e9, 2),
            "read_bandwidth_after_gbs": round(bw_after / 1e9, 2) if bw_after else None,
            "llc": {
                **llc_probe,
                "read_bandwidth_gbs": round(llc_before / 1e9, 2),
                "read_bandwidth_after_gbs": round(llc_after / 1e9, 2) if llc_after else None,
                "source": "llmc.targets.host.probe_llc: sysfs size (a VM's LLC is shared with "
                "other tenants), torch.sum by working set, best of 9; effective_bytes: the sets "
                "that keep 80% of the smallest set's bandwidth (0: not 1.2x DRAM's)",
            },
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "pairs": pairs,
        }
        check_result(doc)
        out = Path(a.out)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(out)
        return doc

    first_tokens: dict[str, list[int]] = {}
    for pname in a.pairs:
        names, baseline, targets = PAIRS[pname]
        workers: dict[str, Worker] = {}
        raw = {n: {"decode": [], "prefill": [], "perf": []} for n in names}
        try:
            for n in names:
                workers[n] = start_worker(n, a, paths, venv)
            for w in workers.values():
                w.wait_ready()
            lb = load_average()
            for r in range(a.rounds):
                for n, w in workers.items():  # interleaved: A B C A B C ...
                    res = w.run()
                    raw[n]["decode"].append(len(res["step_s"]) / sum(res["step_s"]))
                    raw[n]["prefill"].append(a.prompt / res["prefill_s"])
                    if "llama_perf" in res:
                        raw[n]["perf"].append(res["llama_perf"])
                    first_tokens.setdefault(n, res["tokens"][:16])
                    time.sleep(0.3)
                print(f"{pname}: round {r + 1}/{a.rounds}", file=sys.stderr)
        finally:
            for w in workers.values():
                w.close()
        eng = {
            n: {
                "decode": raw[n]["decode"],
                "prefill": raw[n]["prefill"],
                "bytes_per_token": nbytes[n],
                "info": workers[n].info,
            }
            for n in names
        }
        pr = pair_result(eng, baseline, targets, bw_before, (llc_bytes, llc_before))
        for n in names:
            if raw[n]["perf"]:
                pr["engines"][n]["llama_perf_per_round"] = raw[n]["perf"]
            if n.startswith("llmc-"):
                pr["engines"][n]["passes"] = LLMC[n] or "(none)"
            pr["engines"][n]["first_tokens"] = first_tokens[n]
        pr["load_average_before"], pr["load_average_after"] = lb, load_average()
        pairs_out[pname] = pr
        write(pairs_out, None, False)
        print(
            json.dumps(
                {
                    n: (r["decode_tokens_per_s"]["median"], r["pct_of_roofline"])
                    for n, r in pr["engines"].items()
                }
            ),
            file=sys.stderr,
        )
    bw_after = measure_read_bandwidth(a.threads)
    llc_after = float(probe_llc(a.threads, bw_after)["read_bytes_per_s"]) if llc_bytes else 0.0
    doc = write(pairs_out, bw_after, True, llc_after)
    print(markdown_table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
