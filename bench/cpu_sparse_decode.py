"""N:M sparse CPU kernels against dense: kernel level at GPT-2-small shapes, and whole models.

Usage::

    TVM_NUM_THREADS=2 python bench/cpu_sparse_decode.py      # writes bench/cpu_sparse_decode.json
    python bench/cpu_sparse_decode.py --repeats 3 --skip-models --out /tmp/x.json

Kernel level (``kernels``): for each GPT-2-small linear shape ``K x N`` (768x768, 768x3072,
3072x768 and the 768x50257 LM head), float32:

- ``dense``: ``panel_gemm`` (the CPU backend's dense kernel);
- ``nm24`` / ``nm48`` / ``nm816``: ``cpu_sparse.nm_permute`` (values + packed positions);
- ``nm24_gather``: the previous kernel, ``panel_gemm_nm`` (values + 1-byte positions, the
  activation gathered per lane), what hosts without AVX-512 run.

Decode (one row): each variant cycles through enough copies of its weights that the dense ones
exceed 128 MB (so even the sparse ones, about half, stream from memory as in a real decode,
not from the 32 MB L3);
prefill (``--rows`` rows, default 128): one copy. ``row_block``: the prefill kernel with 2, 3
and 4 rows per register block against dense. Variants run interleaved (A B C ... A B C ...)
``--repeats`` times; the JSON has every sample, the medians, each variant's speed-up over dense
(median of the per-repeat ratios, which survive the shared machine's load better than absolute
times) and the load average before and after.

Whole models (``models``, unless ``--skip-models``): the embedded ``tiny`` Llama compiled with
``llmc compile --target cpu`` as dense, ``magnitude:pattern=2:4`` / ``4:8`` / ``8:16``,
``rtn:bits=4`` and ``magnitude:pattern=2:4,rtn:bits=4`` (the LM head stays dense in all), then
loaded together and run interleaved: a 32-token prompt and 128 greedy tokens, batch 1; prefill
and decode tokens/s per run.
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

SHAPES = [(768, 768), (768, 3072), (3072, 768), (768, 50257)]
NB = 64
STREAM_BYTES = 128 << 20
SMOKE_SHAPE = (256, 128)  # --smoke: every variant and row block at this one shape
VARIANTS = {
    "dense": None,
    "nm24": (2, 4),
    "nm48": (4, 8),
    "nm816": (8, 16),
    "nm24_gather": (2, 4),
}
MODELS = {
    "dense": "",
    "nm24": "magnitude:pattern=2:4",
    "nm48": "magnitude:pattern=4:8",
    "nm816": "magnitude:pattern=8:16",
    "rtn4": "rtn:bits=4:measure=false",
    "nm24_rtn4": "magnitude:pattern=2:4,rtn:bits=4:measure=false",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    ap.add_argument("--rows", type=int, default=128, help="prefill rows (kernel level)")
    ap.add_argument("--skip-models", action="store_true", help="kernel level only")
    ap.add_argument("--skip-kernels", action="store_true", help="whole models only")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"kernel level at {SMOKE_SHAPE[0]}x{SMOKE_SHAPE[1]} only, one weight copy (a check)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_sparse_decode.json"))
    return ap.parse_args(argv)


def _target():
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


def _arr(a: np.ndarray):
    import tvm

    return tvm.runtime.tensor(a, tvm.cpu())


def _panels(t: np.ndarray) -> np.ndarray:
    n = t.shape[0]
    p = (n + NB - 1) // NB
    b = np.zeros((p * NB, t.shape[1]), t.dtype)
    b[:n] = t
    return b.reshape(p, NB, -1).transpose(0, 2, 1).copy()


def _nm_weight(n: int, k: int, keep: int, m: int, rng) -> np.ndarray:
    import torch

    w = torch.from_numpy(rng.standard_normal((n, k // m, m)).astype("float32"))
    top = w.abs().topk(keep, -1).indices
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, top, True)
    return (w * mask).reshape(n, k).numpy()


def make_variant(
    name: str, k: int, n: int, rows: int, copies: int, rng, mb: int | None = None
) -> tuple[Callable, int]:
    """A callable running one call on the next weight copy, and the weight bytes one call reads."""
    import torch
    import tvm

    from llmc.backends.kernels import cpu as ck
    from llmc.backends.kernels import cpu_sparse
    from llmc.backends.layouts import compress_nm, pack_nm_index

    m = 1 if rows == 1 else None
    x = _arr(rng.standard_normal((rows, k)).astype("float32"))
    out = _arr(np.zeros((rows, n), "float32"))
    spec = VARIANTS[name]
    if spec is None:
        f = tvm.compile(ck.panel_gemm(k, n, NB, "float32", "float32", m), _target())
        w = _panels(rng.standard_normal((n, k)).astype("float32"))
        ws = [[_arr(w)] for _ in range(copies)]
    else:
        keep, mg = spec
        vals, idx = compress_nm(torch.from_numpy(_nm_weight(n, k, keep, mg, rng)), keep, mg)
        if name.endswith("_gather"):
            fn = ck.panel_gemm_nm(k, n, NB, keep, mg, "float32", "float32", m)
            pos = _panels(idx.numpy())
        else:
            fn = cpu_sparse.nm_permute(k, n, keep, mg, "float32", "float32", m, mb)
            pos = _panels(pack_nm_index(idx, mg).numpy())
        f = tvm.compile(fn, _target())
        v = _panels(vals.numpy())
        ws = [[_arr(v), _arr(pos)] for _ in range(copies)]
    nbytes = sum(a.numpy().nbytes for a in ws[0]) if ws else 0
    state = {"i": 0}

    def run() -> None:
        i = state["i"]
        f(x, *ws[i], out)
        state["i"] = (i + 1) % copies

    return run, nbytes


def time_calls(run: Callable, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - t0) / calls


def bench_kernels(a: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for k, n in [SMOKE_SHAPE] if a.smoke else SHAPES:
        for rows in (1, a.rows):
            dense_bytes = k * n * 4
            stream = 0 if a.smoke else STREAM_BYTES
            copies = 1 if rows > 1 else max(1, -(-stream // dense_bytes))
            calls = max(copies, 3 if rows > 1 else 32)
            runs = {v: make_variant(v, k, n, rows, copies, rng) for v in VARIANTS}
            for r, _ in runs.values():  # warm-up: one pass over the copies
                for _ in range(copies):
                    r()
            samples: dict[str, list[float]] = {v: [] for v in runs}
            load0 = load_average()
            for _ in range(a.repeats):
                for v, (r, _) in runs.items():
                    samples[v].append(time_calls(r, calls))
            load1 = load_average()
            med = {v: statistics.median(s) for v, s in samples.items()}
            speedup = {
                v: round(statistics.median(d / s for d, s in zip(samples["dense"], samples[v])), 3)
                for v in runs
            }
            entry = {
                "k": k,
                "n": n,
                "rows": rows,
                "weight_copies": copies,
                "weight_bytes": {v: nb for v, (_, nb) in runs.items()},
                "median_us": {v: round(t * 1e6, 2) for v, t in med.items()},
                "speedup_vs_dense": speedup,
                "samples_us": {v: [round(t * 1e6, 2) for t in s] for v, s in samples.items()},
                "load_before": load0,
                "load_after": load1,
            }
            print(
                f"{k}x{n} rows={rows}: "
                + " ".join(f"{v}={med[v] * 1e6:.0f}us({speedup[v]:.2f}x)" for v in runs)
                + f" load={load1[0]}",
                flush=True,
            )
            out.append(entry)
            del runs
    return out


def bench_row_block(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Prefill (``--rows`` rows) of ``nm_permute`` with 2, 3 and 4 rows per register block."""
    rng = np.random.default_rng(1)
    out = []
    shapes = ((768, 3072, "nm24"), (3072, 768, "nm24"), (768, 768, "nm816"))
    for k, n, name in [(*SMOKE_SHAPE, "nm24")] if a.smoke else shapes:
        runs = {"dense": make_variant("dense", k, n, a.rows, 1, rng)[0]}
        for mb in (2, 3, 4):
            runs[f"{name}_mb{mb}"] = make_variant(name, k, n, a.rows, 1, rng, mb)[0]
        for r in runs.values():
            r()
        samples: dict[str, list[float]] = {v: [] for v in runs}
        load0 = load_average()
        for _ in range(a.repeats):
            for v, r in runs.items():
                samples[v].append(time_calls(r, 3))
        speedup = {
            v: round(statistics.median(d / x for d, x in zip(samples["dense"], s)), 3)
            for v, s in samples.items()
        }
        out.append(
            {
                "k": k,
                "n": n,
                "rows": a.rows,
                "median_us": {v: round(statistics.median(s) * 1e6, 1) for v, s in samples.items()},
                "speedup_vs_dense": speedup,
                "load_before": load0,
                "load_after": load_average(),
            }
        )
        print(f"row_block {k}x{n}: {speedup}", flush=True)
    return out


def compile_models(work: Path) -> dict[str, dict[str, Any]]:
    from llmc.models import TINY_DIR

    llmc = Path(sys.executable).with_name("llmc")
    info = {}
    for name, passes in MODELS.items():
        dest = work / name
        cmd = [str(llmc), "compile", str(TINY_DIR), "--target", "cpu", "-o", str(dest), "--json"]
        if passes:
            cmd[3:3] = ["--passes", passes]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr}")
        rep = json.loads(r.stdout)
        info[name] = {
            "command": shlex.join(cmd),
            "sparse": rep.get("backend", {}).get("sparse"),
            "warnings": rep.get("warnings", []),
            "path": dest,
        }
    return info


def bench_models(a: argparse.Namespace) -> dict[str, Any]:
    from llmc.runtime.lm import generate
    from llmc.runtime.tvm_runner import load

    with tempfile.TemporaryDirectory() as tmp:
        info = compile_models(Path(tmp))
        lms = {name: load(i["path"]) for name, i in info.items()}
        prompt = [(i * 7 + 3) % 256 for i in range(32)]
        for lm in lms.values():
            generate(lm, prompt[:8], 2)
        pre: dict[str, list[float]] = {v: [] for v in lms}
        dec: dict[str, list[float]] = {v: [] for v in lms}
        load0 = load_average()
        for _ in range(a.repeats):
            for name, lm in lms.items():
                r = generate(lm, prompt, 128)
                pre[name].append(r.prefill_tokens_per_s)
                dec[name].append(r.decode_tokens_per_s)
                time.sleep(0.05)
        load1 = load_average()

    def ratio(s: dict[str, list[float]], v: str, base: str) -> float:
        return round(statistics.median(x / d for x, d in zip(s[v], s[base])), 3)

    out = {}
    for name in lms:
        base = "rtn4" if name.endswith("rtn4") else "dense"
        out[name] = {
            "passes": MODELS[name],
            "command": info[name]["command"],
            "report_sparse": info[name]["sparse"],
            "warnings": info[name]["warnings"],
            "prefill_tok_s_median": round(statistics.median(pre[name]), 1),
            "decode_tok_s_median": round(statistics.median(dec[name]), 1),
            "baseline": base,
            "prefill_vs_baseline": ratio(pre, name, base),
            "decode_vs_baseline": ratio(dec, name, base),
            "prefill_tok_s": [round(x, 1) for x in pre[name]],
            "decode_tok_s": [round(x, 1) for x in dec[name]],
        }
        print(
            f"tiny {name}: prefill {out[name]['prefill_tok_s_median']} tok/s "
            f"({out[name]['prefill_vs_baseline']}x {base}), decode "
            f"{out[name]['decode_tok_s_median']} tok/s ({out[name]['decode_vs_baseline']}x {base})",
            flush=True,
        )
    return {
        "load_before": load0,
        "load_after": load1,
        "prompt_tokens": 32,
        "new_tokens": 128,
        **{"results": out},
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    res: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "threads": os.environ.get("TVM_NUM_THREADS"),
        "commit": git("rev-parse", "HEAD").strip(),
        "load_start": load_average(),
    }
    if not a.skip_kernels:
        res["kernels"] = bench_kernels(a)
        res["row_block"] = bench_row_block(a)
    if not a.skip_models:
        res["models"] = bench_models(a)
    res["load_end"] = load_average()
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
