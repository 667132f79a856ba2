"""``llmc study sweep``: design-space sweeps over hardware and compression, with Pareto fronts.

A study is the Cartesian product of hardware overrides (``--vary KEY=V1,V2,...``: any field
``--set`` accepts for the target) and compression settings (``--passes-grid "SPEC;SPEC;..."``,
``dense`` for none). Each point gets:

- **speed** from the FPGA cycle simulator (``u280``, ``vhk158``, or ``--arch FILE``) or, for GPU and
  CPU targets, from the roofline (:mod:`llmc.codesign.roofline`): prefill ms, decode ms/token and
  tokens/s, request ms, for one request of ``--prompt`` + ``--decode`` tokens (``--batch``);
- **quality**, measured: held-out perplexity and next-token agreement with the dense model of the
  quality model (the model itself when it has weights, ``tiny`` for an architecture-only one, or
  ``--quality-model M``), once per compression setting, cached on disk
  (``$LLMC_CACHE_DIR/study-quality``) so a second sweep over other hardware reuses it;
- **cost**: the board's price and power from its spec (``price_usd``, ``power_w``), and
  tokens/s per kW;
- **feasibility**: a board whose own checks refuse the override (e.g. fewer DSPs than its units
  need), or a model whose weights and KV cache do not fit the memory, is a row marked infeasible
  with the reason, never a crash.

Points run in parallel over processes (``-j``, default: the machine's cores); a worker keeps the
compressed graph of each setting and the lowered FPGA streams of each board structure
(:class:`llmc.fpga.sim.SimCache`), so boards that differ in clock, bandwidth or DSP budget only
re-time the streams (about 0.17 s per LLaMA2-7B point).

Output in DIR: ``points.csv``/``points.json`` (every point), ``pareto.csv`` (the feasible points no
other point beats on speed, perplexity and price at once), ``pareto.png`` (speed against
perplexity, the front drawn), ``heatmap.png`` (when exactly two keys vary: speed over the two, one
panel per compression setting), ``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

METRICS = {
    "decode_tokens_per_s": "decode tokens/s",
    "prefill_tokens_per_s": "prefill tokens/s",
    "request_per_s": "requests/s",
    "tokens_per_s_per_kw": "decode tokens/s per kW",
}
DENSE = ("dense", "none", "")


class StudyError(LlmcError):
    """A study that cannot run as asked (bad --vary, empty grid, unknown metric)."""


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]


def parse_vary(text: str) -> Axis:
    """``KEY=V1,V2,...`` -> :class:`Axis` (values stay strings: the target's override parser
    coerces and validates them)."""
    key, sep, vals = text.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in vals.split(",") if v.strip())
    if not sep or not key:
        raise StudyError(f"--vary {text!r}: want KEY=V1,V2,... (e.g. hbm.bandwidth_gbs=460,819.2)")
    if not values:
        raise StudyError(f"--vary {key}: no values given (want {key}=V1,V2,...)")
    if len(set(values)) != len(values):
        raise StudyError(f"--vary {key}: a value is repeated ({','.join(values)})")
    return Axis(key, values)


def parse_grid(text: str | None) -> tuple[str, ...]:
    """``"SPEC;SPEC;..."`` -> the compression settings (``dense`` = no passes)."""
    if text is None:
        return ("",)
    items = tuple("" if s.strip().lower() in DENSE else s.strip() for s in text.split(";"))
    if not items or all(not s for s in text.split(";")):
        raise StudyError("--passes-grid is empty (want SPEC;SPEC;..., 'dense' for no passes)")
    if len(set(items)) != len(items):
        raise StudyError("--passes-grid: a setting is repeated")
    return items


@dataclass(frozen=True)
class Study:
    model: str
    target: str
    axes: tuple[Axis, ...] = ()
    grid: tuple[str, ...] = ("",)
    arch: str | None = None
    sets: tuple[str, ...] = ()
    prompt: int = 128
    decode: int = 512
    batch: int = 1
    skip_rate: float | None = None
    metric: str = "decode_tokens_per_s"
    quality: bool = True
    quality_model: str | None = None
    window: int = 256
    max_tokens: int | None = 16384
    jobs: int = 0
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise StudyError(f"--metric {self.metric!r}: one of {', '.join(METRICS)}")
        keys = [a.key for a in self.axes]
        if len(set(keys)) != len(keys):
            raise StudyError(f"--vary: a key is varied twice ({', '.join(keys)})")
        set_keys = {s.partition("=")[0] for s in self.sets}
        if set_keys & set(keys):
            raise StudyError(f"--set and --vary name the same key: {sorted(set_keys & set(keys))}")
        if not self.grid:
            raise StudyError("--passes-grid is empty")

    def points(self) -> list[dict[str, Any]]:
        """Every (hardware overrides, passes) combination, grouped by passes setting."""
        out = []
        combos = list(itertools.product(*(a.values for a in self.axes))) or [()]
        for passes in self.grid:
            for combo in combos:
                hw = {a.key: v for a, v in zip(self.axes, combo, strict=True)}
                out.append({"id": len(out), "passes": passes, "hw": hw})
        return out


# ----------------------------------------------------------------------------------------------
# one point (runs in a worker process)

_GRAPHS: dict[tuple[str, str, str], Any] = {}
_SIM_CACHE: Any = None


def _graph(study: Study, passes: str) -> Any:
    key = (study.model, study.target, passes)
    if key not in _GRAPHS:
        from llmc.compile import load, run_passes

        g = load(study.model, allow_pickle=study.allow_pickle).graph
        run_passes(g, passes or None, None, target=study.target, options={})
        _GRAPHS[key] = g
    return _GRAPHS[key]


def _configure(study: Study, hw: dict[str, str]) -> Any:
    from llmc.targets import configure_target, get_target

    tgt = get_target(study.target)
    sets = [*study.sets, *(f"{k}={v}" for k, v in hw.items())]
    if sets or study.arch:
        tgt = configure_target(tgt, {"arch": study.arch, "set": sets})
    return tgt


def evaluate_point(study: Study, point: dict[str, Any]) -> dict[str, Any]:
    """Speed, memory and cost of one point; ``feasible: False`` with a ``reason`` when the board
    refuses the overrides or the model does not fit."""
    global _SIM_CACHE
    from llmc.codesign.roofline import Scenario, analyze
    from llmc.targets import resolve_spec

    row: dict[str, Any] = {
        "id": point["id"],
        **{f"hw.{k}": v for k, v in point["hw"].items()},
        "passes": point["passes"] or "dense",
        "feasible": True,
        "reason": "",
    }
    try:
        tgt = _configure(study, point["hw"])
    except LlmcError as e:
        return {**row, "feasible": False, "reason": _reason(e)}
    spec = resolve_spec(tgt)
    graph = _graph(study, point["passes"])
    sc = Scenario(batch=study.batch, prompt=study.prompt, decode=study.decode)
    rep = analyze(graph, spec, sc)
    weights, kv = rep.totals["weight_bytes"], rep.kv_cache["bytes"]
    row.update(
        {
            "weight_gib": weights / 2**30,
            "kv_cache_gib": kv / 2**30,
            "price_usd": spec.price_usd,
            "power_w": spec.power_w,
        }
    )
    try:
        if tgt.kind == "fpga":
            from llmc.fpga.arch import load_arch
            from llmc.fpga.sim import SimCache, simulate

            if _SIM_CACHE is None:
                _SIM_CACHE = SimCache()
            arch = tgt.extra.get("arch") or load_arch(tgt.name)
            a = arch
            fits = a.hbm.capacity_bytes + a.ddr.capacity_bytes
            if weights + kv > fits:
                raise LlmcError(
                    f"weights + KV cache ({(weights + kv) / 2**30:.1f} GiB) exceed the board's "
                    f"HBM + DDR ({fits / 2**30:.1f} GiB)"
                )
            s = simulate(
                graph,
                arch,
                study.prompt,
                study.decode,
                storage=False,
                skip_rate=study.skip_rate,
                cache=_SIM_CACHE,
            )
            speed = {
                "prefill_ms": s.prefill_ms,
                "decode_ms_per_token": s.decode_ms_per_token,
                "request_ms": s.total_ms,
                "source": "simulator",
            }
        else:
            if spec.mem_bytes and weights + kv > spec.mem_bytes:
                raise LlmcError(
                    f"weights + KV cache ({(weights + kv) / 2**30:.1f} GiB) exceed the target's "
                    f"memory ({spec.mem_bytes / 2**30:.1f} GiB)"
                )
            if study.skip_rate is not None:
                rep = analyze(graph, spec, Scenario(**{**asdict(sc), "skip_rate": study.skip_rate}))
            speed = {
                "prefill_ms": rep.totals["prefill"]["time_ms"],
                "decode_ms_per_token": rep.totals["decode"]["ms_per_token"],
                "request_ms": rep.totals["request_ms"],
                "source": "roofline",
            }
    except LlmcError as e:
        return {**row, "feasible": False, "reason": _reason(e)}
    b = study.batch
    dec = speed["decode_ms_per_token"]
    row.update(speed)
    row["decode_tokens_per_s"] = 1e3 * b / dec if dec else math.inf
    row["prefill_tokens_per_s"] = 1e3 * b * study.prompt / speed["prefill_ms"]
    row["request_per_s"] = 1e3 * b / speed["request_ms"]
    row["tokens_per_s_per_kw"] = (
        row["decode_tokens_per_s"] / (spec.power_w / 1e3) if spec.power_w else math.nan
    )
    return row


def _reason(e: Exception) -> str:
    """The first line of ``e`` without a leading file path (the board file is the same for every
    point of a study)."""
    msg = str(e).splitlines()[0]
    head, sep, rest = msg.partition(": ")
    return rest if sep and ("/" in head or head.endswith((".yaml", ".yml"))) else msg


def check_overrides(study: Study) -> None:
    """Each ``--vary`` value and ``--set`` on its own: an unknown key or a bad value is an error
    (one line naming it), not an infeasible point."""
    from llmc.targets import check_override, get_target

    tgt = get_target(study.target)
    items = [("--set", s) for s in study.sets] + [
        ("--vary", f"{a.key}={v}") for a in study.axes for v in a.values
    ]
    for flag, text in items:  # the target kind's own check (FPGA board fields, spec keys)
        check_override(tgt, text, flag)


def _worker(args: tuple[Study, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from llmc.console import set_quiet

    set_quiet(True)  # the parent's bar counts the points; workers draw nothing
    study, points = args
    return [evaluate_point(study, p) for p in points]


# ----------------------------------------------------------------------------------------------
# quality, cached per compression setting


def quality_model_for(study: Study) -> str | None:
    if not study.quality:
        return None
    if study.quality_model:
        return study.quality_model
    from llmc.frontends import zoo

    return "tiny" if study.model in zoo.names() else study.model


def _model_fingerprint(name: str) -> str:
    """What identifies a quality model's weights cheaply: its files' names, sizes and mtimes."""
    from llmc.frontends import load_model

    p = Path(name)
    if not p.exists():
        import llmc.models

        p = Path(llmc.models.__file__).parent / name
    parts = [name]
    if p.exists():
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    else:  # a name the loader resolves otherwise: its param summary
        g = load_model(name).graph
        parts.append(str(sorted((k, tuple(v.type.shape)) for k, v in g.params.items())))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def measure_quality(study: Study, passes: str, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """Perplexity and agreement of the quality model under ``passes``; cached on disk."""
    from llmc import __version__
    from llmc.cache import cache_dir as default_cache

    qm = quality_model_for(study)
    if qm is None:
        return {}
    base = cache_dir if cache_dir is not None else default_cache()
    key = hashlib.sha256(
        json.dumps(
            [qm, _model_fingerprint(qm), passes, study.window, study.max_tokens, __version__]
        ).encode()
    ).hexdigest()[:24]
    path = None if base is None else Path(base) / "study-quality" / f"{key}.json"
    if path is not None and path.exists():
        try:
            got = json.loads(path.read_text())
            return {**got, "cached": True}
        except (OSError, ValueError):
            pass
    from llmc.compile import load
    from llmc.passes.quality import evaluate

    loaded = load(qm, allow_pickle=study.allow_pickle)
    if loaded.tokenizer is None:
        raise StudyError(f"--quality-model {qm}: it has no tokenizer to read the evaluation text")
    if loaded.graph.meta.get("architecture_only"):
        raise StudyError(
            f"--quality-model {qm}: an architecture-only model has no weights to measure "
            "(give a real checkpoint, or --no-quality)"
        )
    r = evaluate(
        loaded.graph,
        passes or None,
        window=study.window,
        max_tokens=study.max_tokens,
        tokenizer=loaded.tokenizer,
    )
    got = {
        "quality_model": qm,
        "perplexity": r["perplexity"],
        "agreement": r["agreement"],
        "tokens": r["tokens"],
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(got))
        os.replace(tmp, path)
    return {**got, "cached": False}


# ----------------------------------------------------------------------------------------------
# the sweep


@dataclass
class StudyResult:
    study: Study
    rows: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    quality: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def run_study(
    study: Study, out: str | Path, *, progress: Callable[[int], None] | None = None
) -> StudyResult:
    """Evaluate every point of ``study``, write DIR's files, return the rows."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"-o {out}: exists and is not a folder")
    t0 = time.perf_counter()
    points = study.points()
    # validate before any work: every override on its own (key, type, rule), then that every
    # setting compresses the model; a combination the board refuses is an infeasible point
    check_overrides(study)
    for passes in study.grid:
        _graph(study, passes)
    t_setup = time.perf_counter()
    quality = {p: measure_quality(study, p) for p in study.grid} if study.quality else {}
    t_quality = time.perf_counter()
    rows = _evaluate_all(study, points, progress)
    t_points = time.perf_counter()
    for r in rows:
        q = quality.get(r["passes"] if r["passes"] != "dense" else "", {})
        r["perplexity"] = q.get("perplexity", math.nan)
        r["agreement"] = q.get("agreement", math.nan)
    rows.sort(key=lambda r: r["id"])
    front = pareto(rows, study.metric)
    res = StudyResult(
        study,
        rows,
        front,
        quality,
        {
            "setup": t_setup - t0,
            "quality": t_quality - t_setup,
            "points": t_points - t_quality,
        },
    )
    res.files = write_study(res, out)
    res.seconds["total"] = time.perf_counter() - t0
    return res


def _evaluate_all(
    study: Study, points: list[dict[str, Any]], progress: Callable[[int], None] | None
) -> list[dict[str, Any]]:
    jobs = study.jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(points)))
    if jobs == 1:
        rows = []
        for p in points:
            rows.append(evaluate_point(study, p))
            if progress:
                progress(1)
        return rows
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # chunks of one setting each, so a worker's graph and stream caches are reused
    size = max(1, min(64, math.ceil(len(points) / (jobs * 4))))
    chunks: list[list[dict[str, Any]]] = []
    for _, group in itertools.groupby(points, key=lambda p: p["passes"]):
        g = list(group)
        chunks.extend(g[i : i + size] for i in range(0, len(g), size))
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        futs = [ex.submit(_worker, (study, c)) for c in chunks]
        for f in as_completed(futs):
            got = f.result()
            rows.extend(got)
            if progress:
                progress(len(got))
    return rows


def pareto(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The feasible rows no other feasible row beats: higher ``metric``, lower perplexity (when
    measured), lower price; ties on every objective keep all."""

    def objs(r: dict[str, Any]) -> tuple[float, ...]:
        ppl = r.get("perplexity", math.nan)
        return (
            -float(r[metric]),
            float(ppl) if isinstance(ppl, float) and math.isfinite(ppl) else 0.0,
            float(r.get("price_usd") or 0.0),
        )

    ok = [r for r in rows if r.get("feasible") and math.isfinite(float(r.get(metric, math.nan)))]
    vals = [objs(r) for r in ok]
    front = []
    for i, r in enumerate(ok):
        vi = vals[i]
        dominated = any(
            all(a <= b for a, b in zip(vj, vi, strict=True)) and vj != vi
            for j, vj in enumerate(vals)
            if j != i
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: -float(r[metric]))


# ----------------------------------------------------------------------------------------------
# files

_COLUMNS = (
    "id",
    "passes",
    "feasible",
    "reason",
    "decode_tokens_per_s",
    "decode_ms_per_token",
    "prefill_ms",
    "prefill_tokens_per_s",
    "request_ms",
    "request_per_s",
    "tokens_per_s_per_kw",
    "perplexity",
    "agreement",
    "weight_gib",
    "kv_cache_gib",
    "price_usd",
    "power_w",
    "source",
)


def _columns(study: Study) -> list[str]:
    hw = [f"hw.{a.key}" for a in study.axes]
    return [*_COLUMNS[:2], *hw, *_COLUMNS[2:]]


def _csv(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell(r.get(c, "")) for c in cols})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


def _json_safe(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    return o


def write_study(res: StudyResult, out: Path) -> list[str]:
    """Write the study's files into ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    st = res.study
    cols = _columns(st)
    files: dict[str, bytes] = {
        "points.csv": _csv(res.rows, cols).encode(),
        "pareto.csv": _csv(res.pareto, cols).encode(),
        "points.json": json.dumps(
            _json_safe(
                {
                    "study": {**asdict(st), "axes": [asdict(a) for a in st.axes]},
                    "quality": res.quality,
                    "points": res.rows,
                    "pareto": [r["id"] for r in res.pareto],
                    "seconds": res.seconds,
                }
            ),
            indent=1,
        ).encode(),
    }
    plots = {"pareto.png": _pareto_png(res)}
    if len(st.axes) == 2:
        plots["heatmap.png"] = _heatmap_png(res)
    files.update(plots)
    files["report.md"] = _report_md(res, list(plots)).encode()
    files["report.html"] = _report_html(res, plots).encode()
    written = []
    for name, data in files.items():
        p = out / name
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, p)
        written.append(str(p))
    return written


def _label(r: dict[str, Any], st: Study) -> str:
    hw = ", ".join(f"{a.key}={r.get(f'hw.{a.key}')}" for a in st.axes)
    return f"{r['passes']}" + (f" | {hw}" if hw else "")


def _pareto_png(res: StudyResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res.study
    m = st.metric
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ok = [r for r in res.rows if r["feasible"]]
    have_q = any(math.isfinite(r.get("perplexity", math.nan)) for r in ok)
    yk = "perplexity" if have_q else "price_usd"
    cmap = plt.get_cmap("tab10")
    for i, passes in enumerate(dict.fromkeys(r["passes"] for r in ok)):
        pts = [r for r in ok if r["passes"] == passes]
        ax.scatter(
            [r[m] for r in pts],
            [r[yk] for r in pts],
            color=cmap(i % 10),
            alpha=0.6,
            s=28,
            label=passes,
        )
    fr = sorted(res.pareto, key=lambda r: r[m])
    if fr:
        ax.plot([r[m] for r in fr], [r[yk] for r in fr], "k--", lw=1, label="Pareto front")
        ax.scatter([r[m] for r in fr], [r[yk] for r in fr], facecolors="none", edgecolors="k", s=80)
    bad = len(res.rows) - len(ok)
    ax.set_xlabel(METRICS[m])
    ylab = "perplexity (lower is better)" if have_q else "price (USD)"
    if have_q:
        qm = next(iter(res.quality.values()), {}).get("quality_model", "")
        ylab = f"perplexity of {qm} (lower is better)"
    ax.set_ylabel(ylab)
    ax.set_title(
        f"{st.model} on {st.target}: {len(ok)} feasible points"
        + (f", {bad} infeasible" if bad else ""),
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    if ok:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no feasible point", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _heatmap_png(res: StudyResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    st = res.study
    ax_a, ax_b = st.axes
    m = st.metric
    grid = list(dict.fromkeys(r["passes"] for r in res.rows))
    fig, axes = plt.subplots(1, len(grid), figsize=(4.2 * len(grid) + 1, 4), squeeze=False)
    for ax, passes in zip(axes[0], grid, strict=True):
        z = np.full((len(ax_a.values), len(ax_b.values)), np.nan)
        for r in res.rows:
            if r["passes"] != passes or not r["feasible"]:
                continue
            i = ax_a.values.index(r[f"hw.{ax_a.key}"])
            j = ax_b.values.index(r[f"hw.{ax_b.key}"])
            z[i, j] = r[m]
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#dddddd")
        im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap=cmap)
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                bad = np.isnan(z[i, j])
                txt = "infeasible" if bad else f"{z[i, j]:.3g}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="k" if bad else "w")
        ax.set_xticks(range(len(ax_b.values)), ax_b.values, fontsize=7)
        ax.set_yticks(range(len(ax_a.values)), ax_a.values, fontsize=7)
        ax.set_xlabel(ax_b.key)
        ax.set_ylabel(ax_a.key)
        ax.set_title(passes, fontsize=9)
        fig.colorbar(im, ax=ax, label=METRICS[m])
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _table_md(rows: Sequence[dict[str, Any]], st: Study, limit: int = 40) -> list[str]:
    hw = [f"hw.{a.key}" for a in st.axes]
    head = [
        "passes",
        *[h[3:] for h in hw],
        METRICS[st.metric],
        "prefill ms",
        "perplexity",
        "agreement",
        "price USD",
        "feasible",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows[:limit]:
        cells = [
            r["passes"],
            *[str(r.get(h, "")) for h in hw],
            _fmt(r.get(st.metric)),
            _fmt(r.get("prefill_ms")),
            _fmt(r.get("perplexity")),
            _fmt(r.get("agreement")),
            _fmt(r.get("price_usd")),
            "yes" if r["feasible"] else f"no: {r['reason']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"\n({len(rows) - limit} more rows in points.csv)")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _report_md(res: StudyResult, plots: list[str]) -> str:
    st = res.study
    n_bad = sum(1 for r in res.rows if not r["feasible"])
    lines = [
        f"# Study: {st.model} on {st.target}",
        "",
        f"- points: {len(res.rows)} ({n_bad} infeasible), settings: "
        + ", ".join(p or "dense" for p in st.grid),
        "- varied: " + ("; ".join(f"{a.key} = {', '.join(a.values)}" for a in st.axes) or "none"),
        f"- request: batch {st.batch}, prompt {st.prompt}, decode {st.decode}"
        + (f", ffn-skip rate {st.skip_rate}" if st.skip_rate is not None else ""),
        f"- speed from: {next((r['source'] for r in res.rows if r['feasible']), 'no feasible point')}; metric: "
        f"{METRICS[st.metric]}",
    ]
    if res.quality:
        q0 = next(iter(res.quality.values()))
        lines.append(
            f"- quality: perplexity and agreement of `{q0.get('quality_model')}` on its held-out "
            f"text ({q0.get('tokens')} tokens, window {st.window}), measured once per setting"
        )
    lines.append(
        "- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items() if v is not None)
    )
    lines += ["", "## Pareto front", "", *_table_md(res.pareto, st)]
    for p in plots:
        lines += ["", f"![{p}]({p})"]
    lines += ["", "## All points", "", *_table_md(res.rows, st)]
    return "\n".join(lines) + "\n"


def _report_html(res: StudyResult, plots: dict[str, bytes]) -> str:
    import html

    st = res.study
    md = _report_md(res, [])
    body = []
    for line in md.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
            if line[3:] == "Pareto front":
                pass
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
            )
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    out, in_table = [], False
    for b in body:
        if b.startswith("<tr") and not in_table:
            out.append("<table>")
            in_table = True
        elif not b.startswith("<tr") and in_table:
            out.append("</table>")
            in_table = False
        out.append(b)
    if in_table:
        out.append("</table>")
    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">'
        f"<figcaption>{n}</figcaption></figure>"
        for n, d in plots.items()
    )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    title = html.escape(f"llmc study: {st.model} on {st.target}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{imgs}{''.join(out)}</body></html>\n"
    )


__all__ = [
    "Axis",
    "METRICS",
    "Study",
    "StudyError",
    "StudyResult",
    "evaluate_point",
    "measure_quality",
    "pareto",
    "parse_grid",
    "parse_vary",
    "run_study",
]
