"""The GPU check's driver: Llama-2-7B-shape decode, llmc (fp16, W4A16) vs Hugging Face eager and
torch.compile, as a fraction of the measured-bandwidth roofline -> bench/gpu.json.

Run by ``bench/gpu_check.sh`` on a lent GPU machine (see docs/backends.md, "GPU check")::

    python bench/gpu_check.py --gpu-dir .gpu --out bench/gpu.json [--pytest-junit F --pytest-rc N]
    python bench/gpu_check.py --dry-run --out /tmp/gpu.json     # here, no GPU (CI runs this)

Each measurement runs in its own process (``--one NAME``), so one that fails or runs out of
memory is recorded as failed and frees the GPU for the next. Weights are random, drawn on the
GPU; decode is greedy, batch 1, best of ``--repeat`` sequences of ``--prompt-len`` +
``--new-tokens``. The roofline of a run is the measured copy bandwidth over the bytes one decode
step must read: every weight but the embedding table (one row of it is read) plus the KV cache at
the mean context length of the timed steps.

``--dry-run`` checks the prepared folder (bench/gpu_support.py), runs the bandwidth and the
Hugging Face measurements on the CPU with a tiny Llama shape (torch.compile replaced by the same
static-cache loop uncompiled), records the llmc runs as skipped, and writes the same schema.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_support as gs  # noqa: E402

DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "u8": 1, "i8": 1, "i32": 4, "i64": 8}
LLAMA2_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
)  # fmt: skip
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-5,
)  # fmt: skip
RUNS = ("llmc-f16", "llmc-w4a16", "llmc-f16-tc", "hf-eager", "hf-compile")
TIMEOUT_S = {"bandwidth": 120, "llmc-f16": 180, "llmc-w4a16": 180, "llmc-f16-tc": 180}
TIMEOUT_S["hf-eager"] = 180
TIMEOUT_S["hf-compile"] = 300


# -------------------------------------------------------------------------------- measurements


def _sync(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def measure_bandwidth(dev: str, nbytes: int, iters: int = 20) -> dict[str, Any]:
    """Device-to-device copy: bytes read + written per second (median of ``iters``)."""
    import torch

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    times = []
    for i in range(iters + 3):
        _sync(dev)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(dev)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    if not torch.equal(dst[:4096], src[:4096]):
        raise RuntimeError("the copy kernel did not copy")
    med = sorted(times)[len(times) // 2]
    return {"bytes": 2 * nbytes, "GBps": round(2 * nbytes / med / 1e9, 1), "median_s": med}


def kv_bytes_per_position(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def _roofline(run: dict[str, Any], weight_bytes: int, kv_pos: int, a: argparse.Namespace) -> None:
    mean_ctx = a.prompt_len + a.new_tokens // 2
    run["bytes_per_token"] = int(weight_bytes + kv_pos * mean_ctx)
    run["detail"].update(weight_bytes_read=weight_bytes, kv_bytes_at_mean_context=kv_pos * mean_ctx)
    if a.bandwidth_GBps and run.get("decode_tok_s"):
        roof = a.bandwidth_GBps * 1e9 / run["bytes_per_token"]
        run["roofline_tok_s"] = round(roof, 1)
        run["pct_roofline"] = float(f"{100.0 * run['decode_tok_s'] / roof:.3g}")  # 3 digits


def measure_llmc(art: Path, a: argparse.Namespace) -> dict[str, Any]:
    """An llmc artifact with random weights (drawn on the GPU), through ``TVMRunner.bench``."""
    from llmc.runtime.tvm_runner import load

    t0 = time.perf_counter()
    lm = load(art, random_weights=True)
    load_s = time.perf_counter() - t0
    b = lm.bench(prompt_len=a.prompt_len, new_tokens=a.new_tokens, repeat=a.repeat)
    meta, backend = lm.meta, lm.backend
    weight_bytes = sum(
        DTYPE_BYTES[w["dtype"]] * _numel(w["shape"])
        for w in backend["weights"]
        if "embed_tokens" not in w["param"]
    )
    kv = kv_bytes_per_position(
        int(meta["num_layers"]), int(meta["num_kv_heads"]), int(meta["head_dim"]), 2
    )
    run = {
        "decode_tok_s": round(b["decode_tokens_per_s"], 2),
        "decode_ms_per_token": round(b["decode_ms_per_token"], 3),
        "detail": {
            "artifact": art.name,
            "device": b["device"],
            "load_s": round(load_s, 2),
            "prefill_tok_s": round(b["prefill_tokens_per_s"], 1),
        },
    }
    _roofline(run, weight_bytes, kv, a)
    return run


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def hf_model(dev: str, tiny: bool) -> Any:
    """A Llama-2-7B-shape (or tiny) LlamaForCausalLM in fp16 (fp32 on the CPU), weights drawn
    on ``dev`` by the model's own initializer (normal, std 0.02)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**(TINY if tiny else LLAMA2_7B), tie_word_embeddings=False)
    dtype = torch.float16 if dev.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    w = model.model.layers[0].mlp.up_proj.weight
    if not bool(torch.isfinite(w).all()) or float(w.float().std()) < 1e-3:
        raise RuntimeError(f"random weights not drawn (std {float(w.float().std())})")
    return model


def measure_hf(mode: str, dev: str, a: argparse.Namespace) -> dict[str, Any]:
    """Greedy decode through transformers: ``eager`` (its default dynamic cache), ``static``
    (StaticCache, uncompiled) or ``compile`` (StaticCache + torch.compile reduce-overhead)."""
    import torch
    from transformers import StaticCache

    model = hf_model(dev, a.dry_run)
    cfg = model.config
    gen = torch.Generator(device=dev).manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), generator=gen, device=dev)
    steps = a.new_tokens - 1
    cache = None
    step = model
    if mode != "eager":
        cache = StaticCache(config=cfg, max_cache_len=a.prompt_len + a.new_tokens)
    if mode == "compile":
        step = torch.compile(model, mode="reduce-overhead", fullgraph=True)

    @torch.no_grad()
    def once() -> float:
        if cache is not None:
            cache.reset()
            pos = torch.arange(a.prompt_len, device=dev)
            out = model(ids, past_key_values=cache, cache_position=pos, use_cache=True)
            past = cache
        else:
            out = model(ids, use_cache=True)
            past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(steps):
            kw = {"cache_position": torch.tensor([a.prompt_len + i], device=dev)} if cache else {}
            out = step(tok, past_key_values=past, use_cache=True, **kw)
            if cache is None:
                past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True).clone()
        _sync(dev)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    once()  # warm-up; compiles and records the CUDA graphs for `compile`
    first_s = time.perf_counter() - t0
    best = min(once() for _ in range(a.repeat))
    weight_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n
    )
    el = next(model.parameters()).element_size()
    kv = kv_bytes_per_position(
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.hidden_size // cfg.num_attention_heads,
        el,
    )
    run = {
        "decode_tok_s": round(steps / best, 2),
        "decode_ms_per_token": round(1000 * best / steps, 3),
        "detail": {"mode": mode, "first_sequence_s": round(first_s, 2), "device": dev},
    }
    _roofline(run, weight_bytes, kv, a)
    return run


def measure_one(name: str, a: argparse.Namespace) -> dict[str, Any]:
    dev = "cpu" if a.dry_run else "cuda"
    if name == "bandwidth":
        return measure_bandwidth(dev, (32 if a.dry_run else 2048) * 2**20)
    if name.startswith("llmc-"):
        return measure_llmc(a.gpu_dir / "artifacts" / gs.ARTIFACTS[name[5:]], a)
    mode = {"hf-eager": "eager", "hf-compile": "static" if a.dry_run else "compile"}[name]
    return measure_hf(mode, dev, a)


# -------------------------------------------------------------------------------- the parent


def run_child(name: str, a: argparse.Namespace) -> dict[str, Any]:
    """``measure_one(name)`` in a fresh process; a failure comes back as ``{"error": ...}``."""
    cmd = [sys.executable, __file__, "--one", name, "--gpu-dir", str(a.gpu_dir)]
    cmd += ["--prompt-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens)]
    cmd += ["--repeat", str(a.repeat), "--bandwidth-GBps", str(a.bandwidth_GBps or 0)]
    cmd += ["--dry-run"] if a.dry_run else []
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S[name])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT_S[name]} s"}
    wall = round(time.perf_counter() - t0, 1)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail), "wall_s": wall}
    out = json.loads(lines[-1])
    out.setdefault("detail", {})["wall_s"] = wall
    print(f"[gpu_check] {name}: {json.dumps(out)[:300]}", file=sys.stderr, flush=True)
    return out


def machine_info() -> dict[str, str]:
    import torch

    gpu = driver = "none"
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        try:
            q = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
            driver = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            driver = "unknown (no nvidia-smi)"
    import transformers

    return {
        "gpu": gpu,
        "driver": driver,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": str(os.cpu_count()),
    }


def pytest_summary(junit: Path | None, rc: int | None) -> dict[str, int] | None:
    """Counts from ``pytest --junitxml`` (None when pytest was not run)."""
    if junit is None or rc is None:
        return None
    counts = {"rc": rc, "passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    if junit.is_file():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            n = int(suite.get("tests", 0))
            f, e, s = (int(suite.get(k, 0)) for k in ("failures", "errors", "skipped"))
            counts["failed"] += f
            counts["errors"] += e
            counts["skipped"] += s
            counts["passed"] += n - f - e - s
    return counts


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """llmc's decode speed over each peer's, and the goals of docs/backends.md ("GPU numbers"):
    fp16 at >= 85% of the roofline, W4A16 at >= 2.5x transformers eager (None: not measured)."""
    tok = {r["name"]: r["decode_tok_s"] for r in results if r["status"] == "ok"}
    pct = {r["name"]: r["pct_roofline"] for r in results if r["status"] == "ok"}
    out: dict[str, Any] = {}
    for mine in ("llmc-f16", "llmc-w4a16", "llmc-f16-tc"):
        for peer in ("hf-eager", "hf-compile"):
            if mine in tok and peer in tok:
                out[f"{mine} / {peer}"] = round(tok[mine] / tok[peer], 2)
    f16, w4, eager = pct.get("llmc-f16"), tok.get("llmc-w4a16"), tok.get("hf-eager")
    out["goal llmc-f16 >= 85% of roofline"] = None if f16 is None else f16 >= 85.0
    out["goal llmc-w4a16 >= 2.5x hf-eager"] = None if w4 is None or not eager else w4 >= 2.5 * eager
    return out


def _commit(prepared: dict[str, Any]) -> str:
    p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=gs.ROOT, capture_output=True, text=True)
    return p.stdout.strip() or f"{prepared.get('commit', 'unknown')} (prepared.json)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-dir", type=Path, default=gs.ROOT / ".gpu")
    ap.add_argument("--out", type=Path, default=gs.ROOT / "bench" / "gpu.json")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check, tiny CPU peers")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    ap.add_argument("--pytest-junit", type=Path)
    ap.add_argument("--pytest-rc", type=int)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth-GBps", type=float, default=0.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.dry_run and a.one is None:
        a.prompt_len, a.new_tokens, a.repeat = min(a.prompt_len, 8), min(a.new_tokens, 8), 1
    if a.one:
        print(json.dumps(measure_one(a.one, a)))
        return 0
    runs = [r for r in a.runs.split(",") if r]
    if bad := [r for r in runs if r not in RUNS]:
        print(f"error: --runs: unknown {bad}; choose from {','.join(RUNS)}", file=sys.stderr)
        return 2
    try:
        prepared = gs.check_prepared(a.gpu_dir)
    except gs.PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prepared["listing"] = json.loads((a.gpu_dir / "prepared.json").read_text())["created"]
    bw = run_child("bandwidth", a)
    a.bandwidth_GBps = bw.get("GBps", 0.0)
    results = []
    for name in runs:
        if a.dry_run and name.startswith("llmc-"):
            res: dict[str, Any] = {"status": "skipped", "detail": {"reason": "dry run: no GPU"}}
            res["detail"]["artifact_check"] = prepared["artifacts"][name[5:]]
        else:
            res = run_child(name, a)
            if "error" in res:
                res = {"status": "failed", "detail": {"error": res.pop("error"), **res}}
            else:
                res["status"] = "ok"
        empty = dict.fromkeys(("decode_tok_s", "decode_ms_per_token", "bytes_per_token"))
        empty |= dict.fromkeys(("roofline_tok_s", "pct_roofline"))
        results.append({"name": name, **empty, **res})
    out = {
        "compare": compare(results),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": a.dry_run,
        "machine": machine_info(),
        "commit": _commit(prepared),
        "prepared": prepared,
        "pytest": pytest_summary(a.pytest_junit, a.pytest_rc),
        "shape": {
            "model": "tiny llama (dry run, CPU)" if a.dry_run else "Llama-2-7B shape, random",
            "prompt_tokens": a.prompt_len,
            "new_tokens": a.new_tokens,
            "batch": 1,
        },
        "bandwidth": {"bytes": int(bw.get("bytes", 0)), "GBps": float(a.bandwidth_GBps or 0.0)},
        "bandwidth_error": bw.get("error"),
        "runs": results,
    }
    if errs := gs.validate_result(out):
        print("error: result does not match its schema: " + "; ".join(errs), file=sys.stderr)
        return 1
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(a.out)
    for r in results:
        print(
            f"{r['name']:12s} {r['status']:8s} tok/s {r['decode_tok_s']}  roofline% {r['pct_roofline']}"
        )
    print(f"wrote {a.out}")
    return 0 if all(r["status"] != "failed" for r in results) and not bw.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
