"""SmoothQuant (Xiao et al., ICML 2023): migrate activation outliers into the weights.

For each group of linears reading the same activation ``X``, per input channel ``j``:
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` (max over the group's weights); ``X`` is divided
by ``s`` where it is produced and the weights' columns are multiplied by ``s``. The rewrite is
exact in real arithmetic (the graph computes the same function), and makes ``X`` easier to
quantize per token. Where ``X`` is produced:

- an ``rms_norm`` / ``layer_norm`` whose weight (and bias) is a param read only there and whose
  result only feeds linears: the norm weight is divided by ``s`` (q/k/v after
  ``input_layernorm``, gate/up after ``post_attention_layernorm``);
- ``mul(act(gate(x)), up(x))`` feeding ``down_proj``: the rows of ``up`` are divided by ``s``
  (``mlp_down=true``).

Run it before ``w8a8`` (``smoothquant:alpha=0.5,w8a8``) and before ``fuse-elementwise``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.errors import PassError
from llmc.ir.graph import Graph, Node
from llmc.ir.params import Param
from llmc.passes.base import Pass, PassContext, PassOptionError
from llmc.passes.calibration import InputStats, run_layerwise
from llmc.passes.select import DEFAULT_EXCLUDE, module_path, select_linears
from llmc.safetensors_io import keep


@dataclass
class _Group:
    source: str  # "norm" or "up"
    owner: Param  # norm weight or up_proj weight: divided by s
    bias: Param | None
    linears: list[Node]
    label: str


def _find_groups(
    graph: Graph, targets: dict[int, Param], mlp_down: bool
) -> tuple[list[_Group], list[str]]:
    users = graph.users()
    groups: list[_Group] = []
    skipped: list[str] = []
    by_input: dict[int, list[Node]] = {}
    for n in graph.nodes:
        if id(n) in targets:
            by_input.setdefault(id(n.inputs[0]), []).append(n)
    for _, lins in by_input.items():
        x = lins[0].inputs[0]
        prod = x.node
        label = lins[0].scope or x.name
        if prod is None:
            skipped.append(f"{label}: input is a graph input")
            continue
        readers = users.get(x, [])
        if any(id(u) not in targets for u in readers) or x in graph.outputs:
            skipped.append(f"{label}: %{x.name} also feeds non-target ops")
            continue
        if not all(_private_weight(graph, n, lins, users) for n in lins):
            # a tied weight (an LM head sharing the embedding table): scaling its columns
            # would change the other reader too
            skipped.append(f"{label}: a weight is also read outside these linears")
            continue
        if prod.op in ("rms_norm", "layer_norm") and len(prod.inputs) >= 2:
            w = graph.param_of(prod.inputs[1])
            b = graph.param_of(prod.inputs[2]) if len(prod.inputs) > 2 else None
            if w is None or not w.format.is_dense or _param_reads(graph, w.name) != 1:
                skipped.append(f"{label}: norm weight is not a dense param read once")
                continue
            groups.append(_Group("norm", w, b, lins, prod.scope or label))
        elif mlp_down and prod.op == "mul":
            up = _up_linear(graph, prod, users)
            if up is None:
                skipped.append(f"{label}: mul is not act(gate) * up with a private up linear")
                continue
            groups.append(_Group("up", up, None, lins, module_path(up.name)))
        else:
            skipped.append(f"{label}: produced by {prod.op}, which cannot absorb the scales")
    return groups, skipped


def _private_weight(graph: Graph, n: Node, lins: list[Node], users) -> bool:
    """The weight of linear ``n`` is read only as the weight of the linears in ``lins``."""
    p = graph.param_of(n.inputs[1])
    if p is None:
        return False
    ids = {id(m) for m in lins}
    for _, pn in graph.walk():
        if pn.op == "param" and pn.attrs.name == p.name:
            for u in users.get(pn.out, []):
                if id(u) not in ids or any(v is pn.out for v in (u.inputs[:1] + u.inputs[2:])):
                    return False
            if pn.out in graph.outputs:
                return False
    return True


def _param_reads(graph: Graph, name: str) -> int:
    return sum(1 for _, n in graph.walk() if n.op == "param" and n.attrs.name == name)


def _up_linear(graph: Graph, mul: Node, users) -> Param | None:
    """The weight of the linear ``up`` in ``mul(f(gate), up)``, if ``up`` feeds only the mul."""
    for v in mul.inputs:
        n = v.node
        if n is None or n.op != "linear" or len(n.inputs) != 2 or len(users.get(v, [])) != 1:
            continue
        p = graph.param_of(n.inputs[1])
        other = mul.inputs[1] if v is mul.inputs[0] else mul.inputs[0]
        if (
            p is not None
            and p.format.is_dense
            and _param_reads(graph, p.name) == 1
            and other.node is not None
            and other.node.op in ("silu", "gelu", "relu", "sigmoid")
        ):
            return p
    return None


def _set_dense(p: Param, value: torch.Tensor) -> None:
    # spilled during a compile (llmc.safetensors_io.keep), like every weight a pass makes
    p.data = {"value": keep(value.to(p.data["value"].dtype).contiguous())}
    p.invalidate()


@dataclass(frozen=True)
class SmoothQuant(Pass):
    """Fold per-channel smoothing scales (alpha) into norms/up_proj and the linears that read
    them (exact rewrite; follow with w8a8)."""

    name = "smoothquant"
    alpha: float = 0.5
    mlp_down: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise PassOptionError(f"alpha must be in [0, 1], got {self.alpha}")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        ts = select_linears(graph, self.include, self.exclude, pass_name=self.name)
        for t in ts:
            if not t.param.format.is_dense and t.param.format.quant is not None:
                raise PassOptionError(
                    f"{t.path} is already quantized; smoothquant must run before quantization"
                )
        targets = {id(t.node): t.param for t in ts}
        groups, skipped = _find_groups(graph, targets, self.mlp_down)
        rep = ctx.report
        rep.set(alpha=self.alpha, groups=len(groups), skipped=skipped)
        if not groups:
            return
        if any(t.param.is_meta for t in ts):
            graph.meta["smoothquant"] = {"alpha": self.alpha}
            rep.set(meta=True)
            return
        group_of = {id(n): g for g in groups for n in g.linears}
        rows: list[dict] = []

        def apply(seg, stats: dict[Node, InputStats]) -> None:
            done: set[int] = set()
            for n, st in stats.items():
                g = group_of.get(id(n))
                if g is None or id(g) in done:
                    continue
                done.add(id(g))
                rows.append(self._smooth(graph, g, st))

        info = run_layerwise(graph, ctx, [n for g in groups for n in g.linears], apply)
        rep.set(**info.to_dict())
        for r in rows:
            rep.layer(**r)
        graph.meta["smoothquant"] = {"alpha": self.alpha}

    def _smooth(self, graph: Graph, g: _Group, st: InputStats) -> dict:
        assert st.absmax is not None
        ws = [graph.param_of(n.inputs[1]) for n in g.linears]
        act = st.absmax.to(torch.float32).clamp_min(1e-5)
        wmax = (
            torch.stack(
                [p.value().to(torch.float32).abs().amax(dim=0) for p in ws if p is not None]
            )
            .amax(dim=0)
            .clamp_min(1e-5)
        )
        s = (act.pow(self.alpha) / wmax.pow(1.0 - self.alpha)).clamp_min(1e-5)
        # a channel the calibration never saw nonzero, or that no weight reads (a column pruned
        # to zeros), has no outlier to move: leave it (s = 1). Its clamped figure would make s
        # tiny, and the norm's weight divided by it overflows float16 (a second smoothquant, or
        # one after 2:4 pruning, gave inf/NaN logits: tests/test_fuzz_passes.py)
        s = torch.where((act <= 1e-5) | (wmax <= 1e-5), torch.ones_like(s), s)
        ps = list({id(p): p for p in ws if p is not None}.values())
        o = g.owner.value().to(torch.float32)
        folded = [(p, p.value().to(torch.float32) * s[None, :]) for p in ps]
        if g.source == "norm":
            folded.append((g.owner, o / s))
            if g.bias is not None:
                folded.append((g.bias, g.bias.value().to(torch.float32) / s))
        else:  # up_proj rows
            folded.append((g.owner, o / s[:, None]))
        for p, v in folded:  # all or nothing: no group is half smoothed
            dt = p.data["value"].dtype
            if not torch.isfinite(v.to(dt)).all():
                raise PassError(
                    f"smoothquant: {g.label}: the smoothing scales (alpha={self.alpha}) take a "
                    f"weight out of {dt}'s range; give a smaller alpha or exclude the layer"
                )
        for p, v in folded:
            _set_dense(p, v)
        before = float(act.max() / act.mean())
        after_act = act / s
        return {
            "name": g.label,
            "source": g.source,
            "linears": len(g.linears),
            "act_outlier_ratio_before": round(before, 3),
            "act_outlier_ratio_after": round(float(after_act.max() / after_act.mean()), 3),
        }
