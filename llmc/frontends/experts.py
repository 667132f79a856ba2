"""Mixture-of-experts checkpoints: per-expert tensors on disk, stacked tensors in the module.

Mixtral and Qwen2-MoE checkpoints (and transformers' own ``save_pretrained``) store each expert's
projections separately (``block_sparse_moe.experts.3.w1.weight``; ``mlp.experts.3.gate_proj.weight``),
while transformers' modules hold them stacked (``mlp.experts.gate_up_proj [E, 2I, H]``,
``mlp.experts.down_proj [E, H, I]``), and transformers converts on load. So does llmc, before
the checkpoint is checked against the module: :func:`plan` describes the stacked tensors (names
and shapes, so the strict checks of :mod:`llmc.frontends.hf_dir` apply to them) and
:func:`assemble` builds them from the loaded per-expert tensors. Every expert ``0..E-1`` must
have all three projections with agreeing shapes; anything else is one :class:`ModelLoadError`
naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmc.errors import ModelLoadError
from llmc.frontends.untrusted import quote

# family -> (the block holding the experts on disk, gate / up / down projection names)
LAYOUTS: dict[str, tuple[str, tuple[str, str, str]]] = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}


@dataclass
class Plan:
    """Stacked name -> per-expert sources (gate_up: ``[[gate, up], ...]``; down: ``[[down],
    ...]``; a renamed router: ``[[name]]``), and the shapes the checks see."""

    sources: dict[str, list[list[str]]] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)

    def consumed(self) -> set[str]:
        return {s for groups in self.sources.values() for g in groups for s in g}


def plan(
    family: str, shapes: dict[str, tuple[tuple[int, ...], str]], d: Path
) -> tuple[dict[str, tuple[tuple[int, ...], str]], Plan]:
    """The checkpoint's shapes as the module names them (per-expert tensors replaced by the
    stacked ones), and the plan to build those."""
    p = Plan()
    if family not in LAYOUTS:
        return shapes, p
    block, (g, u, dn) = LAYOUTS[family]
    pat = re.compile(
        rf"^(?P<layer>(?:.*\.)?layers\.\d+)\.{block}\.experts\.(?P<e>\d{{1,6}})\."
        rf"(?P<kind>{g}|{u}|{dn})\.weight$"
    )
    found: dict[str, dict[int, dict[str, str]]] = {}
    for name in shapes:
        m = pat.match(name)
        if m:
            found.setdefault(m["layer"], {}).setdefault(int(m["e"]), {})[m["kind"]] = name
        elif block != "mlp" and re.match(rf"^(?:.*\.)?layers\.\d+\.{block}\.gate\.weight$", name):
            p.sources[name.replace(f".{block}.gate.", ".mlp.gate.")] = [[name]]
    for layer, experts in sorted(found.items()):
        n = max(experts) + 1
        gate_up, down = [], []
        for e in range(n):
            have = experts.get(e, {})
            missing = [k for k in (g, u, dn) if k not in have]
            if missing:
                some = next(iter(next(iter(experts.values())).values()))
                raise ModelLoadError(
                    f"{d / shapes[some][1]}: {layer} has experts up to {n - 1} but no "
                    f"{quote(f'{layer}.{block}.experts.{e}.{missing[0]}.weight')}"
                )
            gate_up.append([have[g], have[u]])
            down.append([have[dn]])
        (gs, file), (us, _), (ds, _) = (shapes[gate_up[0][0]], shapes[gate_up[0][1]],
                                        shapes[down[0][0]])  # fmt: skip
        for e in range(n):
            for name, want in ((gate_up[e][0], gs), (gate_up[e][1], us), (down[e][0], ds)):
                if tuple(shapes[name][0]) != tuple(want) or len(want) != 2:
                    raise ModelLoadError(
                        f"{d / shapes[name][1]}: tensor {quote(name)} has shape "
                        f"{list(shapes[name][0])}, unlike expert 0's {list(want)}"
                    )
        p.sources[f"{layer}.mlp.experts.gate_up_proj"] = gate_up
        p.sources[f"{layer}.mlp.experts.down_proj"] = down
        p.shapes[f"{layer}.mlp.experts.gate_up_proj"] = ((n, gs[0] + us[0], gs[1]), file)
        p.shapes[f"{layer}.mlp.experts.down_proj"] = ((n, *ds), file)
    for target, groups in p.sources.items():
        if target not in p.shapes:  # a renamed router
            p.shapes[target] = shapes[groups[0][0]]
    gone = p.consumed()
    out = {k: v for k, v in shapes.items() if k not in gone}
    out.update(p.shapes)
    return out, p


def assemble(p: Plan, target: str, loaded: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stacked tensor ``target`` from the loaded per-expert tensors."""
    groups = p.sources[target]
    if len(groups) == 1 and len(groups[0]) == 1 and not target.endswith("_proj"):
        return loaded[groups[0][0]]
    return torch.stack([torch.cat([loaded[s] for s in grp], dim=0) for grp in groups])
