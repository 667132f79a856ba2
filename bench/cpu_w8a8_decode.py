"""W8A8 decode against per-channel ``rtn:bits=8``, kernel level, on the cpu_peers Llama shapes.

Usage::

    TVM_NUM_THREADS=2 python bench/cpu_w8a8_decode.py -o /tmp/w8a8.json
    git show 6274428:llmc/backends/kernels/cpu_vnni.py > /tmp/old_vnni.py
    TVM_NUM_THREADS=2 python bench/cpu_w8a8_decode.py --old-kernel /tmp/old_vnni.py -o /tmp/w8a8.json

One "token" runs every decode linear of ``bench/cpu_peers.py``'s model once (hidden 768, 12
layers of q/k/v/o 768x768, gate/up 768x2048, down 2048x768, the 768x32000 head), each layer with
its own random weights (110 MB: they stream from memory, as in decode), each variant with its
activation preparation:

- ``rtn8``: ``vnni_digits`` + ``vnni_gsum`` + ``q8w_vnni`` (3 activation digits), what
  ``rtn:bits=8:group=0`` runs;
- ``w8a8``: ``w8a8_vnni`` per linear (the per-token quantization inside the kernel);
- ``w8a8_grouped``: what decode runs: ``w8a8_vnni_multi`` for q/k/v and for gate/up (one call
  each), ``w8a8_vnni`` for o, down and the head;
- ``w8a8_old`` (with ``--old-kernel FILE``, a ``cpu_vnni.py`` from before the fused kernel):
  ``act_quant`` (TE, plain loops) + that file's ``w8a8_vnni`` on int8 codes.

Variants run interleaved, ``--repeats`` samples of ``--tokens`` tokens; wall and process CPU ms per
token (medians), the load average before and after, the machine and the command go to the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

NB = 64
HIDDEN, FFN, LAYERS, VOCAB = 768, 2048, 12, 32000
SMOKE = (128, 256, 1, 256)  # --smoke: hidden, FFN, layers, vocabulary (checks the script runs)

_CACHE: dict[tuple, Any] = {}


def _build(key: tuple, fn: Callable[[], Any]) -> Any:
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    if key not in _CACHE:
        _CACHE[key] = tvm.compile(
            fn(), target=tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
        )
    return _CACHE[key]


def _arr(a: np.ndarray) -> Any:
    import tvm

    return tvm.runtime.tensor(a, tvm.cpu())


def _p(n: int) -> int:
    return (n + NB - 1) // NB


def _a8_weights(rng: np.random.Generator, k: int, n: int) -> list[Any]:
    return [
        _arr(rng.integers(-127, 128, (_p(n), (k + 3) // 4, NB, 4), dtype=np.int8)),
        _arr(np.zeros((_p(n), NB), "int32")),
        _arr(rng.random((_p(n), NB)).astype("float32")),
    ]


def rtn8(rng: np.random.Generator, k: int, n: int) -> Callable[[], Any]:
    from tvm import te

    from llmc.backends.kernels import cpu_vnni as V

    kp, ab, parts = V.padded_k(k, k), V.act_block(k, k), 3

    def prep_fn() -> Any:
        xt = te.placeholder((1, k), "float32", name="x")
        d, s = V.act_digits(xt, kp, ab, parts)
        return te.create_prim_func([xt, d, s, V.group_sums(xt, k)])

    prep = _build(("q8prep", k), prep_fn)
    f = _build(("q8v", k, n), lambda: V.q8w_vnni(k, n, k, parts, "float32", 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    xd, xs = _arr(np.zeros((1, parts, kp), "int8")), _arr(np.zeros((1, kp // ab, parts), "float32"))
    gs = _arr(np.zeros((1, 1), "float32"))
    codes = _arr(rng.integers(0, 255, (_p(n), kp // 4, NB, 4), dtype=np.uint8))
    sc = _arr(rng.random((_p(n), 1, NB)).astype("float32") * 0.01)
    of = _arr(np.full((_p(n), 1, NB), 127.0, "float32"))
    out = _arr(np.zeros((1, n), "float32"))

    def run() -> None:
        prep(x, xd, xs, gs)
        f(xd, xs, gs, codes, sc, of, out)

    return run


def w8a8(rng: np.random.Generator, k: int, ns: tuple[int, ...]) -> Callable[[], Any]:
    from llmc.backends.kernels import cpu_vnni as V

    f = _build(("a8", k, ns), lambda: V.w8a8_vnni_multi(k, ns, 1))
    args = [_arr(rng.standard_normal((1, k)).astype("float32"))]
    for n in ns:
        args += _a8_weights(rng, k, n)
    outs = [_arr(np.zeros((1, n), "float32")) for n in ns]
    return lambda: f(*args, *outs)


def w8a8_old(old: Any) -> Callable[[np.random.Generator, int, int], Callable[[], Any]]:
    def make(rng: np.random.Generator, k: int, n: int) -> Callable[[], Any]:
        from tvm import te

        from llmc.backends.kernels import te_ops

        def aq_fn() -> Any:
            xt = te.placeholder((1, k), "float32", name="x")
            return te.create_prim_func([xt, *te_ops.act_quant(xt, 0.0)])

        aq = _build(("aq", k), aq_fn)
        f = _build(("a8old", k, n), lambda: old.w8a8_vnni(k, n, 1))
        x = _arr(rng.standard_normal((1, k)).astype("float32"))
        xq, xs = _arr(np.zeros((1, k), "int8")), _arr(np.zeros((1,), "float32"))
        w = _a8_weights(rng, k, n)
        out = _arr(np.zeros((1, n), "float32"))

        def run() -> None:
            aq(x, xq, xs)
            f(xq, xs, *w, out)

        return run

    return make


def token(
    variant: str,
    rng: np.random.Generator,
    old: Any,
    dims: tuple[int, int, int, int] = (HIDDEN, FFN, LAYERS, VOCAB),
) -> list[Callable[[], Any]]:
    """The calls of one decode token's linears (``dims``: hidden, FFN, layers, vocabulary)."""
    h, f, layers, vocab = dims
    if variant == "w8a8_grouped":
        layer = [(h, (h, h, h)), (h, (h,)), (h, (f, f)), (f, (h,))]
        return [w8a8(rng, k, ns) for _ in range(layers) for k, ns in layer] + [
            w8a8(rng, h, (vocab,))
        ]
    shapes = [s for _ in range(layers) for s in [(h, h)] * 4 + [(h, f)] * 2 + [(f, h)]]
    shapes.append((h, vocab))
    if variant == "rtn8":
        return [rtn8(rng, k, n) for k, n in shapes]
    if variant == "w8a8":
        return [w8a8(rng, k, (n,)) for k, n in shapes]
    return [w8a8_old(old)(rng, k, n) for k, n in shapes]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=5)
    ap.add_argument("--old-kernel", type=Path, help="a cpu_vnni.py with the int8-input w8a8_vnni")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"one small layer {SMOKE}: checks the script runs",
    )
    a = ap.parse_args(argv)
    dims = SMOKE if a.smoke else (HIDDEN, FFN, LAYERS, VOCAB)
    old = None
    variants = ["rtn8", "w8a8", "w8a8_grouped"]
    if a.old_kernel is not None:
        if not a.old_kernel.is_file():
            raise SystemExit(f"--old-kernel {a.old_kernel}: no such file")
        spec = importlib.util.spec_from_file_location("old_cpu_vnni", a.old_kernel)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        variants.insert(1, "w8a8_old")
    rng = np.random.default_rng(0)
    runs = {v: token(v, rng, old, dims) for v in variants}
    for calls in runs.values():
        for c in calls:
            c()
    load0 = load_average()
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(a.repeats):
        for v, calls in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(a.tokens):
                for c in calls:
                    c()
            wall[v].append((time.perf_counter() - t0) / a.tokens * 1e3)
            cpu[v].append((time.process_time() - c0) / a.tokens * 1e3)
    res = {
        v: {
            "calls_per_token": len(runs[v]),
            "wall_ms_per_token_samples": [round(x, 3) for x in wall[v]],
            "wall_ms_per_token_median": round(statistics.median(wall[v]), 3),
            "cpu_ms_per_token_median": round(statistics.median(cpu[v]), 3),
        }
        for v in variants
    }
    for v, r in res.items():
        print(
            f"{v:14s} wall {r['wall_ms_per_token_median']:8.3f} ms  cpu {r['cpu_ms_per_token_median']:7.3f} ms  calls {r['calls_per_token']}"
        )
    out = {
        "benchmark": "cpu_w8a8_decode",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "commit": git("rev-parse", "HEAD").strip(),
        "machine": {"cpu": cpu_name(), "threads": os.environ.get("TVM_NUM_THREADS")},
        "load_average_before": load0,
        "load_average_after": load_average(),
        "variants": res,
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
