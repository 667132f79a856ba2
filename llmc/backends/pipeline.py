"""The backend pipeline shared by every TVM target, as named phases.

``cpu/pipeline.py``, ``cuda/pipeline.py`` and ``rocm/pipeline.py`` subclass :class:`TVMPipeline`
and override *tables* (target rules, schedule rules, entries, the TVM target dict), not the
phases. The phases, in order::

    lower     IR -> Relax + TE/TIR           (llmc.backends.lower, rules from the rule list)
    legalize  Relax ops -> TIR, fuse          (LegalizeOps, AnnotateTIROpPattern, FuseOps, FuseTIR)
    schedule  give every kernel a schedule    (dlight on GPUs; CPU kernels come scheduled)
    build     TIR -> machine code, VM bytecode (tvm.compile: dataflow lowering, the decode step's
              layer functions inlined (llmc.backends.vm_plan), memory planning,
              llmc.backends.vm_cleanup)
    export    model.so (device code embedded), weights in their compiled layout, manifest fields

Each phase's wall time goes to ``report["backend"]["timing_s"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from llmc.backends.layouts import WeightArg, get_layout
from llmc.backends.lower import KV_CAPACITY, Entry, Lowered, Lowering
from llmc.backends.rules import Rule, check_rules, rule_list
from llmc.backends.vm_cleanup import drop_small_kills, drop_unused_tuples
from llmc.backends.vm_plan import hoist_workspace, inline_layers
from llmc.console import stage
from llmc.ir.graph import Graph
from llmc.targets.kinds import BACKEND_ABI

#: Bumped whenever the compiled ABI (entry signatures, weight file layout) changes.
MODEL_LIB = "model.so"
WEIGHTS_FILE = "weights.safetensors"


class TVMPipeline:
    """One TVM target kind's compilation pipeline (see the module docstring)."""

    kind: str = ""
    entries: tuple[Entry, ...] = (Entry("prefill"),)
    outline_layers: bool = True
    kv_in_place: bool = True  # see llmc.backends.lower: the cache is a buffer the runner owns
    cond_branches: str = "function"  # see llmc.backends.lower, "Control flow"
    #: inline the layer functions into the entries of static activation sizes (decode) before
    #: memory planning, so that one plan covers the whole step (llmc.backends.vm_plan)
    plan_across_layers: bool = True
    #: reshapes become views before fusion (they are not fused into kernels then)
    views_before_fusion: bool = False

    # -- tables a target overrides --------------------------------------------------------------
    def tvm_target(self, target: Any) -> tvm.target.Target:
        if target.tvm_target is None:
            raise ValueError(f"target {target.name} has no TVM target")
        return tvm.target.Target(dict(target.tvm_target))

    def target_rules(self) -> list[Rule]:
        return []

    def schedule_passes(self, tvm_target: tvm.target.Target) -> list[tvm.transform.Pass]:
        return []

    def toolchain(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def export_library(self, ex: relax.VMExecutable, path: Path) -> dict[str, Any]:
        ex.export_library(str(path))
        return {}

    def target_fields(self, tvm_target: tvm.target.Target) -> dict[str, Any]:
        return {}

    # -- phases ---------------------------------------------------------------------------------
    def lower(self, graph: Graph, target: Any, tvm_target: tvm.target.Target) -> Lowered:
        rules = rule_list(self.target_rules())
        check_rules(rules)
        with tvm_target:
            return Lowering(
                graph,
                target,
                tvm_target,
                rules,
                outline_layers=self.outline_layers,
                kv_in_place=self.kv_in_place,
                cond_branches=self.cond_branches,
            ).lower(self.entries)

    def legalize(self, mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
        seq = tvm.transform.Sequential(
            [
                # functions holding a cond were emitted as binding blocks (Relax's If cannot sit
                # in a dataflow block): regroup their pure bindings so that fusion sees them
                relax.transform.ConvertToDataflow(min_size=1),
                relax.transform.LegalizeOps(),
                # a reshape between kernels is a view, not a kernel of its own: fused with
                # other reshapes it would stay a copy (decode's [1, 1, h*d] <-> [1, h, 1, d])
                *([relax.transform.RewriteDataflowReshape()] if self.views_before_fusion else []),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )
        with tvm_target:
            return seq(mod)

    def schedule(self, mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
        passes = self.schedule_passes(tvm_target)
        if not passes:
            return mod
        with tvm_target:
            return tvm.transform.Sequential(passes)(mod)

    def build(
        self,
        mod: tvm.IRModule,
        tvm_target: tvm.target.Target,
        workspaces: dict[str, str] | None = None,
    ) -> relax.VMExecutable:
        """``workspaces`` gets ``{entry: its workspace function}`` (llmc.backends.vm_plan)."""
        workspaces = {} if workspaces is None else workspaces
        finalize = tvm.transform.Sequential(
            [
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                *([inline_layers] if self.plan_across_layers else []),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(),
                *([hoist_workspace(workspaces)] if self.plan_across_layers else []),
                relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(),
                # llmc.backends.vm_cleanup: unread result tuples, a decode step's kills
                drop_unused_tuples,
                drop_small_kills,
                relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol(),
            ]
        )
        with self.toolchain():
            return tvm.compile(mod, target=tvm_target, relax_pipeline=finalize)

    # -- the whole thing ------------------------------------------------------------------------
    def compile(
        self, graph: Graph, target: Any, timing: dict[str, float] | None = None
    ) -> tuple[relax.VMExecutable, Lowered, tvm.IRModule]:
        """Every phase but export: the executable, what lowering decided, the scheduled module."""
        timing = {} if timing is None else timing
        with _timed(timing, "toolchain"), self.toolchain():
            pass  # a missing tool fails here, before minutes of lowering
        tvm_target = self.tvm_target(target)
        with _timed(timing, "lower"):
            lowered = self.lower(graph, target, tvm_target)
        with _timed(timing, "legalize"):
            mod = self.legalize(lowered.mod, tvm_target)
        with _timed(timing, "schedule"):
            mod = self.schedule(mod, tvm_target)
        with _timed(timing, "build"):
            ex = self.build(mod, tvm_target, lowered.workspaces)
        return ex, lowered, mod

    def run(self, graph: Graph, target: Any, out: Path, report: dict[str, Any]) -> dict[str, Any]:
        """Compile ``graph`` for ``target`` into the directory ``out``; returns manifest fields."""
        timing: dict[str, float] = {}
        ex, lowered, mod = self.compile(graph, target, timing)
        tvm_target = self.tvm_target(target)
        kernels = sorted(
            gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
        )
        with _timed(timing, "export"):
            lib_fields = self.export_library(ex, out / MODEL_LIB)
            weights = write_weights(graph, lowered.weights, out)
        backend = {
            "abi": BACKEND_ABI,
            "tvm_target": json.loads(json.dumps(_target_dict(tvm_target))),
            "functions": [e.name for e in lowered.entries],
            "entries": {e.name: dict(e.fixed) for e in lowered.entries},
            # which logits rows each entry returns: "all", or "last" (prefill_last, generation's
            # prefill; an artifact without this key has only all-rows entries)
            "entry_logits": {e.name: e.logits for e in lowered.entries},
            "entry_weights": lowered.entry_weights,
            "layer_functions": lowered.layer_functions,
            "branch_functions": lowered.branch_functions,
            # entry -> a function the runner calls once; its results are passed after the
            # entry's weights on every call (the entry's activation memory, llmc.backends.vm_plan)
            "workspaces": lowered.workspaces,
            "kernels": kernels,
            "weights": weights,
            "inputs": [{"name": v.name, "type": str(v.type)} for v in graph.inputs],
            # in place: past_* arguments are [b, kv_heads, kv_capacity, head_dim] buffers the
            # code writes into, then kv_len = Shape([past]); present_* outputs are those buffers
            "kv_cache": {
                "in_place": lowered.kv_in_place,
                "capacity_symbol": KV_CAPACITY,
                "buffers": [_kv_buffer(v) for v in lowered.kv_inputs],
                # per layer (token pruning): kv_len = Shape([past_0, ..]) in this order, and
                # the entries return the new lengths as a last Shape output
                "per_layer": lowered.kv_per_layer,
                "lengths": lowered.kv_lengths,
            },
            "outputs": [{"name": v.name, "type": str(v.type)} for v in graph.outputs],
            "lowering_rules": lowered.rules_used,
            "model_meta": json.loads(json.dumps(graph.meta, default=str)),
            **lib_fields,
            **self.target_fields(tvm_target),
        }
        report["backend"] = {
            "target": target.name,
            "kernels": len(kernels),
            "functions": backend["functions"],
            "layer_functions": lowered.layer_functions,
            "weights": len(weights),
            "timing_s": timing,
        }
        return {"runtime": "tvm", "tvm": _tvm_version(), "backend": backend}


def device_sources(ex: relax.VMExecutable) -> dict[str, str]:
    """Generated device code by module kind: CUDA C for ``cuda``, AMDGPU assembly for ``hip``."""
    out: dict[str, str] = {}
    stack = [ex.mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            out["cuda"] = m.inspect_source("")
        elif m.kind in ("hip", "rocm"):
            out[m.kind] = m.inspect_source("asm")
        stack.extend(m.imports)
    return out


def _kv_buffer(v: Any) -> dict[str, Any]:
    """What the runner allocates for one in-place ``past_*`` input."""
    _, heads, _, hd = v.type.shape
    from llmc.backends.lower import kv_length_symbol

    return {
        "name": v.name,
        "kv_heads": int(heads),
        "head_dim": int(hd),
        "dtype": v.type.dtype,
        "length": kv_length_symbol(v),
    }


def _target_dict(t: tvm.target.Target) -> dict[str, Any]:
    try:
        return json.loads(t.to_json()) if hasattr(t, "to_json") else json.loads(str(t))
    except (ValueError, TypeError):
        return {"str": str(t)}


def _tvm_version() -> str:
    try:
        from importlib.metadata import version

        return version("apache-tvm")
    except Exception:  # noqa: BLE001
        return str(getattr(tvm, "__version__", "unknown"))


@contextmanager
def _timed(timing: dict[str, float], name: str) -> Iterator[None]:
    """Time a phase into ``timing[name]``; a progress stage (``tvm build  12.3 s``) on a
    terminal."""
    t0 = time.perf_counter()
    try:
        with nullcontext() if name == "toolchain" else stage(f"tvm {name}"):
            yield
    finally:
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0


def write_weights(graph: Graph, args: Sequence[WeightArg], out: Path) -> list[dict[str, Any]]:
    """Write ``weights.safetensors`` with every weight whose compiled layout differs from its
    storage, then ``graph.ir`` + ``params.safetensors`` (the IR's own storage, which the
    artifact loader reads); returns the manifest's weight table (argument order).

    Each weight is stored once: a param whose every storage field is rebuilt bit for bit from
    its compiled layouts (:func:`llmc.backends.layouts.invert_layout`, checked here on the
    tensors as they are written) is left out of params.safetensors, which records where it is
    (:data:`llmc.artifact.DERIVED_PARAMS_KEY`). Weights are produced, written and dropped one at
    a time (:func:`llmc.safetensors_io.write_safetensors`), so writing adds one weight's memory;
    after each, the param it came from drops its dense cache and its mapped pages
    (:func:`llmc.safetensors_io.release`), so writing does not grow RSS to the whole model.
    """
    import torch

    from llmc.artifact import write_graph
    from llmc.backends.layouts import invert_layout, invert_nm
    from llmc.ir.types import to_torch_dtype
    from llmc.safetensors_io import Entry as TensorEntry
    from llmc.safetensors_io import release, write_safetensors

    root = graph.root()
    entries: list[TensorEntry] = []
    table = []
    by_key: dict[str, WeightArg] = {}
    read_from_params: set[str] = set()  # params some argument reads from params.safetensors
    for wa in args:
        p = root.params[wa.param]
        entry = wa.to_json()
        if p.is_meta:
            entry["file"] = None  # architecture-only: the runner must be given weights
        elif wa.layout == "dense" and wa.dtype == p.type.dtype and p.format.quant is None:
            entry["file"], entry["key"] = "params.safetensors", f"{wa.param}::value"
            read_from_params.add(wa.param)
        else:
            layout = get_layout(wa.layout)
            entries.append(
                TensorEntry(
                    wa.name,
                    tuple(int(d) for d in wa.shape),
                    to_torch_dtype(wa.dtype),
                    lambda layout=layout, p=p, dt=wa.dtype: layout.transform(p, dt),
                )
            )
            by_key[wa.name] = wa
            entry["file"], entry["key"] = WEIGHTS_FILE, wa.name
        table.append(entry)
    derived: dict[str, dict[str, dict[str, str]]] = {}
    nm_half: dict[str, tuple[WeightArg, torch.Tensor]] = {}  # N:M values/index seen first

    def same(v: torch.Tensor, want: torch.Tensor | None) -> bool:
        return (
            want is not None
            and v.dtype == want.dtype
            and v.shape == want.shape
            and torch.equal(v, want)
        )

    def check(e: TensorEntry, t: torch.Tensor) -> None:
        wa = by_key[e.key]
        if wa.param in read_from_params:
            return
        p = root.params[wa.param]
        if wa.layout.endswith(("nm.values", "nm.index", "nm.packed.index")):  # from the pair
            if wa.param not in nm_half:
                nm_half[wa.param] = (wa, t)
                return
            other, t2 = nm_half.pop(wa.param)
            (va, vt), (ia, it) = sorted(
                [(wa, t), (other, t2)], key=lambda x: "index" in x[0].layout
            )
            if not (va.layout.endswith("nm.values") and "index" in ia.layout):
                return
            if same(invert_nm(va.layout, vt, it, p), p.data.get("value")):
                derived.setdefault(wa.param, {})["value"] = {
                    "file": WEIGHTS_FILE,
                    "key": va.name,
                    "layout": va.layout,
                    "index_key": ia.name,
                }
            return
        inv = invert_layout(wa.layout, t, p)
        if inv is None:
            return
        field, v = inv
        if same(v, p.data.get(field)):
            derived.setdefault(wa.param, {})[field] = {
                "file": WEIGHTS_FILE,
                "key": wa.name,
                "layout": wa.layout,
            }

    def check_and_release(e: TensorEntry, t: torch.Tensor) -> None:
        try:
            check(e, t)
        finally:  # the param's pages and dense cache leave the process until it is read again
            p = root.params[by_key[e.key].param]
            p.invalidate()
            for v in p.data.values():
                release(v)

    if entries:
        write_safetensors(out / WEIGHTS_FILE, entries, on_tensor=check_and_release)
    complete = {n: f for n, f in derived.items() if set(f) == set(root.params[n].data)}
    write_graph(graph, out, complete)
    return table
