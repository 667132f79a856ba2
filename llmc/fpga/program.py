"""Model-level compilation: what lives in HBM, in which format, at which address.

:func:`build_program` reads the IR once (ops, shapes, param storage formats, scopes) and lays out
the accelerator's memory: linear weights as tiles (see :mod:`llmc.fpga.layout`), embedding
tables, norm vectors and RoPE tables as float32 rows, the KV-cache regions of the cache inputs
(``max_tokens`` positions each), token-id / position inputs and the outputs. Instruction streams
for length buckets are then generated on demand by :mod:`llmc.fpga.lower` and cached.

Addresses are *logical* byte addresses of the functional model (activations and caches as
float32); the cycle model charges activation-class traffic at the hardware width
(``arch.act_bytes``) and places the regions on HBM channels (weights striped over all channels).
Weights that do not fit in HBM spill to DDR; a model that fits in neither is refused with the
numbers (:class:`CapacityError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llmc.errors import LlmcError, UnsupportedOpError
from llmc.fpga.arch import ArchError, FpgaArch
from llmc.fpga.layout import (
    WeightFormat,
    choose_tile_rows,
    pack_linear,
    tile_bytes,
    weight_format,
)
from llmc.ir.graph import Graph, Node, Value
from llmc.ir.ops import rope_inv_freq
from llmc.ir.params import Param

GiB = float(2**30)


class CapacityError(LlmcError):
    """The model does not fit the board's memory (the message gives the numbers)."""


@dataclass
class Region:
    """An HBM (or DDR) range: ``size`` functional bytes at ``addr``; ``hw_bytes`` what the
    hardware stores (weights as packed, activation-class data at ``act_bytes``)."""

    name: str
    kind: str  # weight | table | vec | rope | kv | in | out
    addr: int
    size: int
    hw_bytes: float
    mem: str = "hbm"  # hbm | ddr


@dataclass
class Tile:
    addr: int
    row0: int
    rows: int
    nbytes: int


@dataclass
class LinearInfo:
    name: str  # weight param name
    param: Param
    bias: Param | None
    fmt: WeightFormat
    n: int
    k: int
    tile_rows: int
    tiles: list[Tile] = field(default_factory=list)
    region: Region | None = None


@dataclass
class RopeTable:
    key: tuple[Any, ...]
    rd: int
    interleaved: bool
    cos: Region
    sin: Region
    attrs: Any


@dataclass
class Program:
    """Everything about a model on a board that does not depend on the sequence length."""

    graph: Graph
    arch: FpgaArch
    regions: dict[str, Region]
    linears: dict[str, LinearInfo]
    ropes: dict[tuple[Any, ...], RopeTable]
    hbm_bytes: int  # functional image size
    cache_inputs: dict[str, Value]
    int_inputs: dict[str, Value]
    _streams: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)
    #: token pruning (llmc.fpga.prune): the plan, and the register of each KV region's length
    prune: Any = None
    kv_reg: dict[str, int] = field(default_factory=dict)
    #: (stage, bucket) -> sha256 of the encoded stream an artifact shipped; when set, every stream
    #: lowered here must encode to those bytes (the runner executes what the artifact holds)
    shipped: dict[tuple[str, int], str] | None = field(default=None, repr=False)

    # -- streams -------------------------------------------------------------------------------
    @property
    def chunk(self) -> int:
        return self.arch.prefill_bucket

    def prefill_chunks(self, n: int) -> int:
        """Chunk streams a prompt of ``n`` tokens runs (its length bucket / ``prefill_bucket``)."""
        return _bucket(n, self.arch.prefill_bucket, self.arch.max_tokens, "prompt") // self.chunk

    def decode_bucket(self, total: int) -> int:
        """Bucket of a decode step whose attention sees ``total`` tokens (cache + the new one)."""
        return _bucket(total, self.arch.decode_bucket, self.arch.max_tokens, "sequence")

    def stream(self, stage: str, bucket: int) -> Any:
        """The instruction stream (:class:`llmc.fpga.lower.Stream`) of prefill chunk ``bucket``
        or of the decode bucket ``bucket``; cached."""
        key = (stage, bucket)
        if key not in self._streams:
            from llmc.fpga.lower import lower_stream

            s = lower_stream(self, stage, bucket)
            if self.shipped is not None:
                _check_shipped(self.shipped, stage, bucket, s.encode())
            self._streams[key] = s
        return self._streams[key]

    def all_buckets(self) -> list[tuple[str, int]]:
        a = self.arch
        if self.prune is not None:
            return self.prune.buckets(a)
        return [("prefill", c) for c in range(a.max_tokens // a.prefill_bucket)] + [
            ("decode", t) for t in range(a.decode_bucket, a.max_tokens + 1, a.decode_bucket)
        ]

    def users(self) -> dict[Value, list[Node]]:
        """Users of every value, region nodes included (a ``cond``'s regions are lowered inline)."""
        got = self.__dict__.get("_users")
        if got is None:
            got = {}
            for _, n in self.graph.walk():
                for v in n.inputs:
                    got.setdefault(v, []).append(n)
            self.__dict__["_users"] = got
        return got

    def hw_bytes(self, kind: str | None = None, mem: str | None = None) -> float:
        return sum(
            r.hw_bytes
            for r in self.regions.values()
            if (kind is None or r.kind == kind) and (mem is None or r.mem == mem)
        )

    # -- functional image ----------------------------------------------------------------------
    def hbm_image(self) -> np.ndarray:
        """The initial HBM contents (weights, tables; caches, inputs and outputs zeroed)."""
        img = np.zeros(self.hbm_bytes, dtype=np.uint8)
        for lin in self.linears.values():
            bias = lin.bias.value().detach() if lin.bias is not None else None
            tiles = pack_linear(lin.param, lin.fmt, bias, lin.tile_rows)
            for t, raw in zip(lin.tiles, tiles, strict=True):
                img[t.addr : t.addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        for r in self.regions.values():
            if r.kind in ("table", "vec"):
                p = self.graph.params[r.name.split(":", 1)[1]]
                v = p.value().detach().to(torch.float32).contiguous().numpy().reshape(-1)
                img[r.addr : r.addr + v.nbytes] = v.view(np.uint8)
        for rt in self.ropes.values():
            cos, sin = rope_tables(rt.attrs, rt.rd, self.arch.max_tokens)
            for reg, v in ((rt.cos, cos), (rt.sin, sin)):
                img[reg.addr : reg.addr + v.nbytes] = v.reshape(-1).view(np.uint8)
        return img


def _bucket(n: int, q: int, limit: int, what: str) -> int:
    if n < 1:
        raise LlmcError(f"{what} length must be >= 1, got {n}")
    if n > limit:
        raise LlmcError(
            f"{what} length {n} exceeds the accelerator's max_tokens ({limit}); raise max_tokens "
            "with --set or shorten the input"
        )
    return -(-n // q) * q


def rope_tables(attrs: Any, rd: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin rows ``[max_tokens, rd]`` computed exactly as the interpreter's ``rope`` does."""
    inv = rope_inv_freq(attrs, rd)
    pos = torch.arange(max_tokens, dtype=torch.int64)[None, :]
    freqs = pos.to(torch.float32)[:, :, None] * inv[None, None, :]
    emb = (
        torch.repeat_interleave(freqs, 2, dim=-1)
        if attrs.interleaved
        else torch.cat((freqs, freqs), dim=-1)
    )
    cos = (emb.cos() * attrs.mscale).to(torch.float32)[0]
    sin = (emb.sin() * attrs.mscale).to(torch.float32)[0]
    return cos.contiguous().numpy(), sin.contiguous().numpy()


class _Alloc:
    def __init__(self, arch: FpgaArch) -> None:
        self.addr = 0
        self.arch = arch
        self.regions: dict[str, Region] = {}

    def add(self, name: str, kind: str, size: int, hw_bytes: float) -> Region:
        if name in self.regions:
            return self.regions[name]
        r = Region(name, kind, self.addr, size, hw_bytes)
        self.addr += -(-size // 64) * 64  # 64-byte aligned
        self.regions[name] = r
        return r


def build_program(graph: Graph, arch: FpgaArch) -> Program:
    """Lay out a model's memory on a board (see the module docstring)."""
    al = _Alloc(arch)
    act = arch.act_bytes
    users = graph.users()
    cache_inputs: dict[str, Value] = {}
    int_inputs: dict[str, Value] = {}
    for v in graph.inputs:
        if v.type.dtype in ("i64", "i32"):
            int_inputs[v.name] = v
            al.add(f"in:{v.name}", "in", 4 * arch.max_tokens, 4 * arch.max_tokens)
        elif _is_cache_input(v, users):
            cache_inputs[v.name] = v
            kvh, hd = _static(v.type.shape[1], v, "heads"), _static(v.type.shape[3], v, "head_dim")
            n = kvh * arch.max_tokens * hd
            al.add(f"kv:{v.name}", "kv", 4 * n, act * n)
        else:
            raise UnsupportedOpError(
                f"graph input %{v.name}: {v.type} is neither token ids/positions nor a KV cache; "
                "the FlightLLM model runs LM graphs (see the LM graph ABI)"
            )
    linears: dict[str, LinearInfo] = {}
    ropes: dict[tuple[Any, ...], RopeTable] = {}
    half = int(arch.buffers.weight_kb * 1024) // 2
    unit = arch.mv_unit[0]
    for _, n in graph.walk():
        if n.op == "linear":
            p = graph.param_of(n.inputs[1])
            if p is None:
                raise UnsupportedOpError(
                    f"linear %{n.out.name} at {n.scope or '?'}: the weight is computed, not a "
                    "param; the accelerator streams weights from HBM"
                )
            if p.name in linears:
                continue
            b = graph.param_of(n.inputs[2]) if len(n.inputs) == 3 else None
            fmt = weight_format(p, arch.sparse_nnz, where=f"{n.scope or p.name} (@{p.name})")
            out_f, k = (int(d) for d in p.type.shape)
            rows = choose_tile_rows(out_f, k, fmt, b is not None, half, unit)
            if rows == 0:
                need = tile_bytes(min(unit, out_f), k, fmt, b is not None)
                raise ArchError(
                    f"{arch.name}: field 'buffers.weight_kb' = {arch.buffers.weight_kb:g} is too "
                    f"small for one weight tile of @{p.name} ({min(unit, out_f)} rows x {k} "
                    f"{fmt.describe()} = {need} bytes, double-buffered: needs "
                    f"{2 * need / 1024:.1f} KiB)"
                )
            lin = LinearInfo(p.name, p, b, fmt, out_f, k, rows)
            start = al.addr
            for r0 in range(0, out_f, rows):
                r = min(rows, out_f - r0)
                nb = tile_bytes(r, k, fmt, b is not None)
                lin.tiles.append(Tile(al.addr, r0, r, nb))
                al.addr += -(-nb // 64) * 64
            total = al.addr - start
            lin.region = Region(f"w:{p.name}", "weight", start, total, float(total))
            al.regions[lin.region.name] = lin.region
            linears[p.name] = lin
        elif n.op == "embedding":
            p = graph.param_of(n.inputs[1])
            if p is None:
                raise UnsupportedOpError(f"embedding %{n.out.name}: the table must be a param")
            v, d = (int(x) for x in p.type.shape)
            al.add(f"t:{p.name}", "table", 4 * v * d, act * v * d)
        elif n.op in ("rms_norm", "layer_norm") or n.op in ("add", "mul", "sub"):
            for x in n.inputs[1:] if n.op in ("rms_norm", "layer_norm") else n.inputs:
                p = graph.param_of(x)
                if p is not None:
                    if len(p.type.shape) != 1:
                        raise UnsupportedOpError(
                            f"{n.op} %{n.out.name} at {n.scope or '?'}: only vector params are "
                            f"supported as operands, got @{p.name} {p.type}"
                        )
                    d = int(p.type.shape[0])
                    al.add(f"v:{p.name}", "vec", 4 * d, 4 * d)
        elif n.op == "rope":
            a = n.attrs
            hd = _static(n.inputs[0].type.shape[3], n.inputs[0], "head_dim")
            rd = a.rotary_dim or hd
            key = (a, rd)
            if key not in ropes:
                i = len(ropes)
                sz = 4 * arch.max_tokens * rd
                cos = al.add(f"rope{i}:cos", "rope", sz, 4 * arch.max_tokens * rd)
                sin = al.add(f"rope{i}:sin", "rope", sz, 4 * arch.max_tokens * rd)
                ropes[key] = RopeTable(key, rd, a.interleaved, cos, sin, a)
    cache_vals = {id(v) for v in cache_inputs.values()}
    for v in graph.outputs:
        if v.node is not None and v.node.op == "concat" and id(v.node.inputs[0]) in cache_vals:
            continue
        row = int(math.prod(_static(d, v, "output") for d in v.type.shape[2:]))
        al.add(f"out:{v.name}", "out", 4 * arch.max_tokens * row, act * arch.max_tokens * row)
    from llmc.fpga.prune import plan_pruning

    plan = plan_pruning(graph, cache_inputs)
    if plan is not None:
        plan.add_regions(al, arch)
    prog = Program(graph, arch, al.regions, linears, ropes, al.addr, cache_inputs, int_inputs)
    if plan is not None:
        prog.prune, prog.kv_reg = plan, plan.kv_reg
    _place(prog)
    return prog


def _place(prog: Program) -> None:
    """Weights go to HBM while they fit (after caches, tables and I/O), the rest to DDR."""
    a = prog.arch
    hbm_cap = a.hbm.capacity_bytes
    fixed = sum(r.hw_bytes for r in prog.regions.values() if r.kind != "weight")
    weights = sorted((r for r in prog.regions.values() if r.kind == "weight"), key=lambda r: r.addr)
    total_w = sum(r.hw_bytes for r in weights)
    if fixed + total_w > hbm_cap + a.ddr.capacity_bytes or fixed > hbm_cap:
        raise CapacityError(
            f"model does not fit {a.name}: weights need {total_w / GiB:.2f} GiB and KV cache, "
            f"tables and I/O {fixed / GiB:.2f} GiB (max_tokens={a.max_tokens}), but the board "
            f"has {hbm_cap / GiB:.2f} GiB HBM + {a.ddr.capacity_bytes / GiB:.2f} GiB DDR; "
            "quantize or prune the model (--passes), or lower max_tokens"
        )
    used = fixed
    for r in weights:
        if used + r.hw_bytes <= hbm_cap:
            used += r.hw_bytes
        else:
            r.mem = "ddr"


def _is_cache_input(v: Value, users: dict[Value, list[Node]]) -> bool:
    if v.type.rank != 4 or not v.type.is_float:
        return False
    us = users.get(v, [])
    return bool(us) and all(u.op == "concat" and u.inputs[0] is v for u in us)


def _static(d: Any, v: Value, what: str) -> int:
    if not isinstance(d, int):
        raise UnsupportedOpError(
            f"%{v.name}: {what} dimension {d} must be static for the accelerator ({v.type})"
        )
    return d


def _check_shipped(
    shipped: dict[tuple[str, int], str], stage: str, bucket: int, raw: bytes
) -> None:
    import hashlib

    want = shipped.get((stage, bucket))
    if want is None:
        raise LlmcError(f"the artifact ships no {stage} stream for bucket {bucket}; recompile")
    if hashlib.sha256(raw).hexdigest() != want:
        raise LlmcError(
            f"the artifact's {stage} stream for bucket {bucket} differs from the one this llmc "
            "lowers from its graph (edited, or built by another llmc); recompile the model"
        )
