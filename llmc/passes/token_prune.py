"""Prefill token pruning (AIM's schedule, ATP-style adaptive thresholds, LazyLLM's KV consistency).

Between decoder layers, during prefill, each prompt token is scored by the attention it receives
(``score=attention``: from the last ``window`` query rows of the previous layer, averaged over
heads; ``score=pagerank``: AIM's PageRank over that layer's attention among the prompt rows) and
only the best survive into the next layer. The kept fraction follows AIM's piecewise-linear
schedule over layers: every token for layers ``< l1``, then linearly fewer until ``l2``, then the
floor ``keep``; ``average=A`` instead solves the floor so that the mean over layers is ``A``. The
first token (attention sink, position 0) and the last ``recent`` tokens always survive.
``adaptive=true`` replaces the fixed count per layer with a per-input threshold on the score
distribution (a row survives when its score is at least ``theta_l`` times the mean; ``theta_l``
calibrated on the calibration text to give the schedule's fraction on average). Baselines at equal
keep: ``score=uniform`` (evenly spaced rows) and ``score=random`` (a seeded hash of positions).

The IR, before each layer ``l`` whose kept fraction drops (scope ``PREFIX.l.prune``, block
``prune``)::

    %s = token_scores(%q_{l-1}, %present_k_{l-1}, %pos) {method, window, ...} : f32[batch, rows]
    %m = keep_rows(%s, %pos) {keep = f_l, total = "seq", recent, sink, method} : bool[batch, rows]
    %h' = gather_rows(%h, %m) {length = "keep_l"}        // the residual stream
    %pos' = gather_rows(%pos, %m) {length = "keep_l"}    // positions travel with the rows

Later layers run on ``keep_l`` rows (their reshapes name ``keep_l``), so their KV caches hold only
the kept tokens: the graph becomes an ``llmc-lm-v2`` graph whose layer ``i`` caches ``past_{i}``
positions. Decode calls have one row, which ``recent >= 1`` always keeps, so decode runs the model
unchanged against the per-layer caches (a pruned token has KV entries in the layers before it was
pruned and none after: decode attends, per layer, to exactly what that layer kept).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from llmc.errors import PassError
from llmc.ir.graph import Graph, Node, Value, regions_of
from llmc.ir.ops_adaptive import KeepRowsAttrs, keep_rows
from llmc.ir.structure import LM_ABI_V2, LMAbiError, Structure, check_lm_abi, layer_scope
from llmc.ir.types import Dim, SymDim, dim_substitute, sym, type_substitute
from llmc.passes.base import Pass, PassContext, PassOptionError
from llmc.passes.rewrite import retype

SCORES = ("attention", "pagerank", "uniform", "random")
ATTENTION_OPS = ("attention", "attention_async")


def schedule(num_layers: int, l1: int, l2: int, keep: float) -> list[float]:
    """AIM's piecewise-linear kept fraction per layer: 1 below ``l1``, ``keep`` from ``l2`` on,
    linear in between: layer ``l1 + j`` keeps ``1 - (1 - keep) * (j + 1) / (l2 - l1 + 1)``."""
    out = []
    for layer in range(num_layers):
        if layer < l1:
            out.append(1.0)
        elif layer >= l2:
            out.append(keep)
        else:
            out.append(1.0 - (1.0 - keep) * (layer - l1 + 1) / (l2 - l1 + 1))
    return out


def solve_floor(num_layers: int, l1: int, l2: int, average: float) -> float | None:
    """The floor ``keep`` whose :func:`schedule` averages ``average`` over layers (it is linear
    in the floor), or None when no floor in (0, 1] reaches it."""
    a0 = sum(schedule(num_layers, l1, l2, 0.0)) / num_layers
    a1 = 1.0
    if not a0 < average <= a1:
        return None
    return (average - a0) / (a1 - a0)


@dataclass
class PrunePoint:
    layer: int
    fraction: float  # kept fraction of the prompt from this layer on
    scores: Node | None = None


def _attention_node(s: Structure, layer: int) -> Node:
    found = [n for n in s.nodes(layer) if n.op in ATTENTION_OPS]
    if len(found) != 1:
        raise PassError(
            f"pass 'token-prune': layer {layer} has {len(found)} attention nodes (need one to "
            "score tokens by)"
        )
    return found[0]


def _anchor(graph: Graph, s: Structure, layer: int) -> int:
    """Index in ``graph.nodes`` of layer ``layer``'s first non-param node."""
    for i, n in enumerate(graph.nodes):
        if n.op != "param" and s.layer(n) == layer:
            return i
    raise PassError(f"pass 'token-prune': layer {layer} has no nodes")


def _live_rows(graph: Graph, at: int, rows: Dim) -> list[Value]:
    """Values made before node ``at`` (or graph inputs) that nodes from ``at`` on read and whose
    type has the row axis ``rows``: the residual stream and the positions."""
    made_before = {id(n.out) for n in graph.nodes[:at]}
    inputs = {id(v) for v in graph.inputs}
    out: list[Value] = []
    for n in graph.nodes[at:]:
        for v in n.inputs:
            if id(v) not in made_before and id(v) not in inputs:
                continue
            if v.type.rank >= 2 and v.type.shape[1] == rows and all(v is not o for o in out):
                out.append(v)
    return out


def _subst_attrs(attrs: Any, mapping: dict[str, Dim]) -> Any:
    if attrs is None or not dataclasses.is_dataclass(attrs):
        return attrs
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        if isinstance(v, SymDim):
            nv: Any = dim_substitute(v, mapping)
        elif isinstance(v, tuple) and any(isinstance(x, SymDim) for x in v):
            nv = tuple(dim_substitute(x, mapping) if isinstance(x, SymDim) else x for x in v)
        else:
            continue
        if nv != v:
            changes[f.name] = nv
    return dataclasses.replace(attrs, **changes) if changes else attrs


def _subst_nodes(graph: Graph, nodes: list[Node], mapping: dict[str, Dim]) -> None:
    """Rename row symbols in ``nodes``' attributes and regions (their inputs' types), then
    re-infer the types."""
    for n in nodes:
        n.attrs = _subst_attrs(n.attrs, mapping)
        for r in regions_of(n):
            for v in r.inputs:
                v.type = type_substitute(v.type, mapping)
            _subst_nodes(r, r.nodes, mapping)
    retype(graph, nodes)


def rewrite_prune(
    graph: Graph,
    points: list[PrunePoint],
    score: str,
    keep_attrs: dict[str, Any],
    score_attrs: dict[str, Any],
    thetas: dict[int, float] | None = None,
) -> None:
    """Insert the scoring, mask and gathers before each prune point's layer (module docstring)
    and give every layer its own cache length symbol (LM ABI v2)."""
    abi = check_lm_abi(graph)
    n_layers = abi.num_layers
    # per-layer cache lengths: past -> past_i in layer i's inputs (and what they feed)
    for i in range(n_layers):
        for v in graph.inputs[2 + 2 * i : 4 + 2 * i]:
            v.type = type_substitute(v.type, {"past": sym(f"past_{i}")})
    _subst_nodes(graph, graph.nodes, {})
    s = Structure(graph)
    prefix = s.prefix or "model.layers"
    seq = sym("seq")
    rows: Dim = seq
    pos = next(v for v in graph.inputs if v.name == "positions")
    for pt in points:
        s = Structure(graph)
        at = _anchor(graph, s, pt.layer)
        live = _live_rows(graph, at, rows)
        # the residual stream, and per-row bool masks that ride along with it (ffn-skip's
        # eligibility and saturation masks): each is gathered with the same keep mask
        h = [v for v in live if v is not pos and v.type.dtype != "bool"]
        masks = [v for v in live if v.type.dtype == "bool"]
        if len(h) != 1 or all(v is not pos for v in live):
            raise PassError(
                f"pass 'token-prune': the values entering layer {pt.layer} with a row axis are "
                f"{', '.join('%' + v.name for v in live) or 'none'}; expected the residual "
                "stream and the positions (a graph this pass cannot prune)"
            )
        attn = _attention_node(s, pt.layer - 1)
        scope = layer_scope(prefix, pt.layer) + ".prune"
        new: list[Node] = []

        def emit(
            op: str, *ins: Value, scope: str = scope, new: list[Node] = new, **attrs: Any
        ) -> Value:
            n = graph.make_node(op, ins, attrs, scope=scope, block="prune")
            new.append(n)
            return n.out

        a = attn.attrs
        method = "random" if score in ("uniform", "random") else score
        sc = emit(
            "token_scores",
            attn.inputs[0],
            attn.inputs[1],
            pos,
            method=method,
            scale=float(a.scale),
            causal=bool(a.causal),
            attn_window=int(a.window),
            **score_attrs,
        )
        kmethod = "uniform" if score == "uniform" else "topk"
        theta = 1.0
        if thetas is not None:
            kmethod, theta = "threshold", thetas[pt.layer]
        mask = emit(
            "keep_rows", sc, pos, keep=pt.fraction, method=kmethod, theta=theta, **keep_attrs
        )
        name = f"keep_{pt.layer}"
        h2 = emit("gather_rows", h[0], mask, length=name)
        p2 = emit("gather_rows", pos, mask, length=name)
        m2 = [emit("gather_rows", m, mask, length=name) for m in masks]
        graph.nodes[at:at] = new
        last = new[-1]
        graph.replace_uses(h[0], h2, after=last)
        graph.replace_uses(pos, p2, after=last)
        for m, g2 in zip(masks, m2, strict=True):
            graph.replace_uses(m, g2, after=last)
        _subst_nodes(graph, graph.nodes[at + len(new) :], {_sym_name(rows): sym(name)})
        pt.scores = sc.node
        rows, pos = sym(name), p2
    graph.meta["abi"] = LM_ABI_V2
    check_lm_abi(graph)


def _sym_name(d: Dim) -> str:
    assert isinstance(d, SymDim) and len(d.symbols) == 1
    return next(iter(d.symbols))


@dataclass(frozen=True)
class TokenPrune(Pass):
    """Prefill token pruning: between layers keep the prompt tokens that receive the most
    attention (or PageRank, or evenly spaced, or random), on AIM's schedule (all until `l1`,
    linearly fewer until `l2`, then `keep`; or `average`); sink and last `recent` always kept."""

    name = "token-prune"
    keep: float | None = None
    average: float | None = None
    l1: int | None = None
    l2: int | None = None
    score: str = "attention"
    window: int = 8
    recent: int = 4
    sink: bool = True
    adaptive: bool = False
    seed: int = 0
    iters: int = 20

    def check(self) -> None:
        if self.keep is not None and self.average is not None:
            raise PassOptionError("give keep or average, not both")
        if self.keep is not None and not 0 < self.keep <= 1:
            raise PassOptionError(f"keep must be in (0, 1], got {self.keep}")
        if self.average is not None and not 0 < self.average <= 1:
            raise PassOptionError(f"average must be in (0, 1], got {self.average}")
        if self.score not in SCORES:
            raise PassOptionError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.l1 is not None and self.l1 < 1:
            raise PassOptionError(
                f"l1 must be >= 1 (tokens are scored by the previous layer's attention), got "
                f"{self.l1}"
            )
        if self.l1 is not None and self.l2 is not None and self.l2 < self.l1:
            raise PassOptionError(f"l2={self.l2} must be >= l1={self.l1}")
        if self.window < 0:
            raise PassOptionError(f"window must be >= 0 (0: every query row), got {self.window}")
        if self.recent < 1:
            raise PassOptionError(f"recent must be >= 1 (the last token), got {self.recent}")
        if self.iters < 1:
            raise PassOptionError(f"iters must be >= 1, got {self.iters}")
        if self.adaptive and self.score in ("uniform", "random"):
            raise PassOptionError(
                f"adaptive=true thresholds scores; score={self.score} has none to threshold"
            )

    def plan(self, num_layers: int) -> tuple[int, int, float, list[float]]:
        """``(l1, l2, floor, fraction per layer)`` for a model of ``num_layers`` layers."""
        l1 = self.l1 if self.l1 is not None else max(1, num_layers // 4)
        l2 = self.l2 if self.l2 is not None else max(l1, num_layers // 2)
        for key, v in (("l1", l1), ("l2", l2)):
            if v >= num_layers:
                raise PassOptionError(
                    f"pass '{self.name}': {key}={v} must be below the model's {num_layers} layers"
                )
        if l2 < l1:
            raise PassOptionError(f"pass '{self.name}': l2={l2} must be >= l1={l1}")
        if self.average is not None:
            floor = solve_floor(num_layers, l1, l2, self.average)
            if floor is None:
                lowest = sum(schedule(num_layers, l1, l2, 0.0)) / num_layers
                raise PassOptionError(
                    f"pass '{self.name}': average={self.average} is not reachable with l1={l1}, "
                    f"l2={l2} on {num_layers} layers (the schedule averages more than "
                    f"{lowest:.3g} for any floor); lower l1/l2 or raise average"
                )
        else:
            floor = 0.5 if self.keep is None else self.keep
        return l1, l2, floor, schedule(num_layers, l1, l2, floor)

    def run(self, graph: Graph, ctx: PassContext) -> None:
        if any(n.op == "gather_rows" for _, n in graph.walk()):
            raise PassError(f"pass '{self.name}': the graph already prunes tokens")
        try:
            abi = check_lm_abi(graph)
        except LMAbiError as e:
            raise PassError(f"pass '{self.name}': {e}") from None
        windows = {int(n.attrs.window) for _, n in graph.walk() if n.op in ATTENTION_OPS}
        if windows - {0}:
            raise PassError(
                f"pass '{self.name}': the model uses sliding-window attention (window "
                f"{max(windows)}): the window counts cache rows, so pruning would change what it "
                "covers; llmc refuses rather than change the model silently"
            )
        _check_target(self.name, ctx.target)
        _check_fpga(self, ctx.target, graph)
        num = abi.num_layers
        l1, l2, floor, frac = self.plan(num)
        points = [
            PrunePoint(layer, frac[layer])
            for layer in range(1, num)
            if frac[layer] < frac[layer - 1] - 1e-12
        ]
        keep_attrs = {"recent": self.recent, "sink": self.sink, "total": "seq"}
        score_attrs = {"window": self.window, "iters": self.iters, "seed": self.seed}
        thetas = None
        rep = ctx.report
        if self.adaptive:
            thetas, measured = calibrate_thetas(graph, ctx, points, keep_attrs, score_attrs, self)
            rep.set(thetas={str(k): v for k, v in thetas.items()}, calib_fraction=measured)
            for pt in points:  # the floor under the threshold: half the schedule's fraction
                pt.fraction = pt.fraction / 2
        rewrite_prune(graph, points, self.score, keep_attrs, score_attrs, thetas)
        graph.meta["token_prune"] = {
            "schedule": frac,
            "score": self.score,
            "adaptive": self.adaptive,
            "recent": self.recent,
            "sink": self.sink,
        }
        rep.set(
            l1=l1,
            l2=l2,
            floor=floor,
            schedule=[round(f, 6) for f in frac],
            expected_prefill_token_fraction=sum(frac) / num,
            prune_layers=[p.layer for p in points],
            score=self.score,
            adaptive=self.adaptive,
        )


def _check_target(pname: str, target: str) -> None:
    """Targets whose backend cannot run a pruned graph refuse at compile time, in one line."""
    if target == "ref":
        return
    from llmc.targets import get_target

    kind = get_target(target).kind
    support = PRUNE_TARGET_KINDS
    if kind not in support and kind not in FPGA_PRUNE_KINDS:
        raise PassError(
            f"pass '{pname}' cannot apply to target {target} ({kind}) yet: its backend does not "
            "lower token_scores/keep_rows/gather_rows or keep per-layer KV lengths; measure it "
            "on the reference interpreter (--target ref)"
        )


#: target kinds whose backends lower token pruning (grown as backends learn it)
PRUNE_TARGET_KINDS: tuple[str, ...] = ("cpu", "cuda", "rocm")

#: the FlightLLM model (llmc/fpga/prune.py): attention scores, top-k, a fixed schedule
FPGA_PRUNE_KINDS: tuple[str, ...] = ("fpga",)


def _check_fpga(opts: TokenPrune, target: str | None, graph: Graph | None = None) -> None:
    """What the FlightLLM model does not lower, refused at compile time in one line."""
    if not target or target == "ref":
        return
    from llmc.targets import get_target

    if get_target(target).kind not in FPGA_PRUNE_KINDS:
        return
    if opts.adaptive:
        raise PassError(
            f"pass '{opts.name}': adaptive=true is not supported on {target}: its kept counts are "
            "data-dependent, and the accelerator's streams are compiled per row count; use the "
            "fixed schedule (keep=/average=)"
        )
    if graph is not None and "ffn_skip" in graph.meta:
        raise PassError(
            f"pass '{opts.name}' after ffn-skip is not supported on {target} yet: the accelerator's "
            "segmented prefill does not carry ffn-skip's per-row masks across a pruning point; "
            "use one of the two passes on the FPGA (both together run on cpu/cuda/rocm)"
        )
    if opts.score == "pagerank":
        raise PassError(
            f"pass '{opts.name}': score=pagerank is not supported on {target}: the accelerator "
            "scores tokens by the attention they receive (score=attention), or by the uniform / "
            "random baselines"
        )


def calibrate_thetas(
    graph: Graph,
    ctx: PassContext,
    points: list[PrunePoint],
    keep_attrs: dict[str, Any],
    score_attrs: dict[str, Any],
    opts: TokenPrune,
) -> tuple[dict[int, float], float]:
    """Per prune point, the threshold ``theta`` (in units of the mean score of the rows entering
    that layer) under which a calibration window keeps, on average, the schedule's fraction
    ``f_l`` of its prompt. Closed loop, one point after the other: point ``l`` is fitted on the
    scores of the rows that the already-fitted thresholds of the earlier points let through
    (each window alone, as a single prompt is pruned), so pruning earlier layers, which
    changes the scores later layers see, is accounted for."""
    from llmc.runtime.interp import Interpreter

    thetas: dict[int, float] = {}
    fracs = []
    for i, p in enumerate(points):
        g = graph.copy()
        # the fitted points as they will run (floor: half the schedule), this one keeping all
        pts = [PrunePoint(q.layer, q.fraction / 2) for q in points[:i]] + [PrunePoint(p.layer, 1.0)]
        rewrite_prune(g, pts, opts.score, keep_attrs, score_attrs, {**thetas, p.layer: 0.0})
        node = pts[-1].scores
        got: list[tuple[torch.Tensor, torch.Tensor, int]] = []

        def hook(n: Node, ins: list[torch.Tensor], out: torch.Tensor, node=node, got=got) -> None:
            if n is node:
                for r in range(out.shape[0]):
                    got.append((out[r : r + 1].detach().float().cpu(), ins[2][r : r + 1].cpu(), 0))

        from llmc.console import track

        interp = Interpreter(g, device=ctx.device, hook=hook)
        for batch in track(
            ctx.calibration().batches(graph),
            f"token-prune calibrate point {i + 1}/{len(points)} (layer {p.layer})",
        ):
            for r in range(batch["input_ids"].shape[0]):  # one prompt at a time
                one = {k: (v[r : r + 1] if v.dim() else v) for k, v in batch.items()}
                interp.run(one)
                interp.rt.env.clear()
        total = int(batch["input_ids"].shape[1])
        thetas[p.layer], f = _fit_theta(got, p.fraction, p.fraction / 2, total, keep_attrs)
        fracs.append(f)
    return thetas, (sum(fracs) / len(fracs) if fracs else 1.0)


def _fit_theta(
    windows: list[tuple[torch.Tensor, torch.Tensor, int]],
    target: float,
    floor: float,
    total: int,
    keep_attrs: dict[str, Any],
) -> tuple[float, float]:
    """Bisect ``theta`` so that the threshold rule keeps, averaged over the windows (each
    ``(scores [1, rows], positions [1, rows], _)``), ``target`` of each window's ``total``
    prompt tokens; ``floor``: the rule's minimum kept fraction of the prompt."""

    def frac(theta: float) -> float:
        a = KeepRowsAttrs(
            keep=min(max(floor, 1e-6), 1.0),
            method="threshold",
            theta=theta,
            **{k: v for k, v in keep_attrs.items() if k != "total"},
        )
        kept = [int(keep_rows(sc, pos, a, total).sum()) for sc, pos, _ in windows]
        return sum(kept) / (total * len(kept)) if kept else 1.0

    lo, hi = 0.0, 64.0  # frac(lo) = every row entering, frac(hi) = the floor
    for _ in range(40):
        mid = (lo + hi) / 2
        if frac(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi, frac(hi)


def prefill_fraction(kv_lengths: list[int], prompt: int) -> float:
    """``prefill_token_fraction``: the mean over layers of kept / prompt tokens."""
    return sum(kv_lengths) / (len(kv_lengths) * prompt) if kv_lengths and prompt else 1.0
