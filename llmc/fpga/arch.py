"""FlightLLM accelerator architecture: one description per board, loaded from YAML.

A board file (``llmc/targets/data/<name>.yaml``, ``kind: fpga``) gives every parameter as ``{value: ..., source:
"..."}``: where the figure comes from (the board's data sheet, the FlightLLM paper, or an
assumption of ours) travels with it into reports. A user file may start with ``base: u280`` and
override only some keys; ``--set key=value`` (dotted keys, YAML values) overrides last.

Every field is declared once in :data:`FIELDS` with its type, its validity rule and a one-line
meaning; :func:`validate` refuses impossible values (zero DSPs, negative bandwidth, a buffer too
small for one hardware tile) with an :class:`ArchError` that names the field.

Unit shapes (see docs/fpga.md, "Architecture"):

- ``mm_unit = [tokens, lanes, rows]``: the matrix-matrix mode of the processing engine multiplies
  ``tokens`` activation rows by ``rows`` weight rows, ``lanes`` input features per cycle each
  (FlightLLM VHK158: 2 x 16 x 128 = 4096 MACs per cycle);
- ``mv_unit = [rows, lanes, tokens]``: matrix-vector mode, ``rows`` DSP chains of ``lanes`` DSPs
  each on one token (64 x 16 x 1).

Example::

    a = load_arch("u280", ["hbm.bandwidth_gbs=920", "clock_mhz=300"])
    a.hbm.bandwidth_gbs, a.source("clock_mhz")   # 920.0, 'override (--set clock_mhz=300)'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmc.errors import LlmcError
from llmc.targets.files import DATA_DIR, data_files, file_kind
from llmc.targets.spec import HardwareSpec, Target

ARCH_DIR = DATA_DIR  # the board files live with the other targets (kind: fpga)


class ArchError(LlmcError):
    """An architecture file or override is malformed or describes impossible hardware."""


# ----------------------------------------------------------------------------------------------
# the description


@dataclass(frozen=True)
class DspSpec:
    total: int
    macs_per_dsp: int
    chain_length: int
    sparse_chain: bool
    chain_fill_cycles: int
    reduction_latency: int
    shared_mpe: bool


@dataclass(frozen=True)
class HbmSpec:
    channels: int
    channel_mb: float
    bandwidth_gbs: float
    eff_same: float
    eff_cross: float
    burst_bytes: int
    latency_ns: float

    @property
    def capacity_bytes(self) -> float:
        return self.channels * self.channel_mb * 2**20

    @property
    def channel_bandwidth(self) -> float:
        """Bytes/s of one pseudo-channel at 100% efficiency."""
        return self.bandwidth_gbs * 1e9 / self.channels


@dataclass(frozen=True)
class DdrSpec:
    channels: int
    capacity_gb: float
    bandwidth_gbs: float
    efficiency: float

    @property
    def capacity_bytes(self) -> float:
        return self.capacity_gb * 2**30


@dataclass(frozen=True)
class BufferSpec:
    act_kb: float
    weight_kb: float
    kv_kb: float
    index_kb: float
    instr_kb: float

    def total_kb(self) -> float:
        return self.act_kb + self.weight_kb + self.kv_kb + self.index_kb + self.instr_kb


@dataclass(frozen=True)
class FpgaArch:
    """A FlightLLM accelerator on one board; see the module docstring."""

    name: str
    description: str
    board: str
    clock_mhz: float
    slrs: int
    cores: int
    dsp: DspSpec
    mm_unit: tuple[int, int, int]
    mv_unit: tuple[int, int, int]
    sfu_width: int
    sfu_latency: int
    sparse_block: int
    sparse_nnz: tuple[int, ...]
    mask_block: int
    max_tokens: int
    prefill_bucket: int
    decode_bucket: int
    hbm: HbmSpec
    ddr: DdrSpec
    buffers: BufferSpec
    onchip_mb: float
    act_bytes: int
    issue_cycles: int
    power_w: float
    price_usd: float
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    # -- derived -------------------------------------------------------------------------------
    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    @property
    def mm_macs(self) -> int:
        return self.mm_unit[0] * self.mm_unit[1] * self.mm_unit[2]

    @property
    def mv_macs(self) -> int:
        return self.mv_unit[0] * self.mv_unit[1] * self.mv_unit[2]

    def dsps_needed(self) -> int:
        """DSPs of all cores (each core instantiates its own MM/MV units)."""
        mm = math.ceil(self.mm_macs / self.dsp.macs_per_dsp)
        mv = math.ceil(self.mv_macs / self.dsp.macs_per_dsp)
        return self.cores * (max(mm, mv) if self.dsp.shared_mpe else mm + mv)

    @property
    def memory_bytes(self) -> float:
        return self.hbm.capacity_bytes + self.ddr.capacity_bytes

    def source(self, key: str) -> str:
        return self.sources.get(key, "unspecified")

    def get(self, key: str) -> Any:
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self) -> dict[str, Any]:
        """``{key: {"value": v, "source": s}}`` for every field (what reports print)."""
        out: dict[str, Any] = {"name": self.name}
        for f in FIELDS:
            v = self.get(f.key)
            out[f.key] = {
                "value": list(v) if isinstance(v, tuple) else v,
                "source": self.source(f.key),
            }
        return out

    def hardware_spec(self) -> Any:
        """The registry's :class:`~llmc.targets.spec.HardwareSpec` (peak MAC rate of the MM
        unit, HBM bandwidth and capacity) for roofline and co-design studies."""
        peak = 2.0 * self.cores * self.mm_macs * self.clock_hz
        return HardwareSpec(
            {"i8": peak, "i4": peak, "f16": peak / 2, "f32": peak / 4},
            self.hbm.bandwidth_gbs * 1e9,
            self.hbm.capacity_bytes,
            power_w=self.power_w,
            price_usd=self.price_usd,
            source=f"FlightLLM model ({self.board}); see llmc/targets/data/{self.name}.yaml",
        )

    def replace(self, overrides: Iterable[str]) -> FpgaArch:
        return _build(self.name, _flatten_arch(self), dict(self.sources), list(overrides), "")


# ----------------------------------------------------------------------------------------------
# the field table: key, type, rule, meaning


@dataclass(frozen=True)
class Field:
    key: str
    kind: str  # int | float | bool | str | ints | int3
    rule: Callable[[Any], bool] | None
    rule_text: str
    doc: str


def _pos(v: Any) -> bool:
    return v > 0


def _nonneg(v: Any) -> bool:
    return v >= 0


def _frac(v: Any) -> bool:
    return 0 < v <= 1


def _allpos(v: Any) -> bool:
    return len(v) > 0 and all(x > 0 for x in v)


F = Field
FIELDS: tuple[Field, ...] = (
    F("description", "str", None, "", "one line for `llmc targets`"),
    F("board", "str", None, "", "board and device"),
    F("clock_mhz", "float", _pos, "> 0", "accelerator clock"),
    F("slrs", "int", _pos, ">= 1", "super logic regions (dies)"),
    F("cores", "int", _pos, ">= 1", "accelerator cores (MPE + SFU each), at most one per SLR"),
    F("dsp.total", "int", _pos, ">= 1", "DSP slices on the device"),
    F("dsp.macs_per_dsp", "int", _pos, ">= 1", "8-bit MACs one DSP performs per cycle (packing)"),
    F("dsp.chain_length", "int", _pos, ">= 1", "DSPs cascaded into one chain (one DSP group)"),
    F("dsp.sparse_chain", "bool", None, "", "configurable chain: N:16 sparsity speeds MACs up"),
    F("dsp.chain_fill_cycles", "int", _nonneg, ">= 0", "pipeline fill of a chain + adder tree"),
    F("dsp.reduction_latency", "int", _nonneg, ">= 0", "cycles of a reduction node"),
    F("dsp.shared_mpe", "bool", None, "", "MM and MV modes share one set of DSPs"),
    F("mm_unit", "int3", _allpos, "three positive ints", "matrix-matrix [tokens, lanes, rows]"),
    F("mv_unit", "int3", _allpos, "three positive ints", "matrix-vector [rows, lanes, tokens]"),
    F("sfu_width", "int", _pos, ">= 1", "special-function unit: elements per cycle"),
    F("sfu_latency", "int", _nonneg, ">= 0", "special-function pipeline latency (cycles)"),
    F("sparse_block", "int", _pos, ">= 1", "sparse weight block edge (16 x 16 blocks)"),
    F("sparse_nnz", "ints", _allpos, "positive ints", "allowed non-zeros per block row"),
    F("mask_block", "int", _pos, ">= 1", "attention mask block edge (64 x 64)"),
    F("max_tokens", "int", _pos, ">= 1", "longest sequence (prompt + generated)"),
    F("prefill_bucket", "int", _pos, ">= 1", "prefill lengths round up to multiples of this"),
    F("decode_bucket", "int", _pos, ">= 1", "decode positions round up to multiples of this"),
    F("hbm.channels", "int", _pos, ">= 1", "HBM pseudo-channels"),
    F("hbm.channel_mb", "float", _pos, "> 0", "capacity of one channel (MiB)"),
    F("hbm.bandwidth_gbs", "float", _pos, "> 0", "peak HBM bandwidth, all channels (GB/s)"),
    F("hbm.eff_same", "float", _frac, "in (0, 1]", "achievable efficiency, same-channel access"),
    F("hbm.eff_cross", "float", _frac, "in (0, 1]", "achievable efficiency, cross-channel access"),
    F("hbm.burst_bytes", "int", _pos, ">= 1", "bytes per burst (shorter rows waste the rest)"),
    F("hbm.latency_ns", "float", _nonneg, ">= 0", "first-byte latency of a load"),
    F("ddr.channels", "int", _nonneg, ">= 0", "DDR channels"),
    F("ddr.capacity_gb", "float", _nonneg, ">= 0", "DDR capacity (GiB)"),
    F("ddr.bandwidth_gbs", "float", _nonneg, ">= 0", "peak DDR bandwidth (GB/s)"),
    F("ddr.efficiency", "float", _frac, "in (0, 1]", "achievable DDR efficiency"),
    F("buffers.act_kb", "float", _pos, "> 0", "on-chip activation buffer (KiB)"),
    F("buffers.weight_kb", "float", _pos, "> 0", "on-chip weight buffer, double-buffered (KiB)"),
    F("buffers.kv_kb", "float", _pos, "> 0", "on-chip K/V block buffer, double-buffered (KiB)"),
    F("buffers.index_kb", "float", _pos, "> 0", "token-id / position buffer (KiB)"),
    F("buffers.instr_kb", "float", _pos, "> 0", "instruction buffer (KiB)"),
    F("onchip_mb", "float", _pos, "> 0", "on-chip SRAM of the device (BRAM + URAM, MiB)"),
    F("act_bytes", "int", _pos, ">= 1", "bytes per activation / KV element in hardware"),
    F("issue_cycles", "int", _nonneg, ">= 0", "cycles to fetch and decode one instruction"),
    F("power_w", "float", _nonneg, ">= 0", "board power"),
    F("price_usd", "float", _nonneg, ">= 0", "board price"),
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}


def builtin_names() -> list[str]:
    """The built-in boards: the target data files of kind ``fpga``."""
    return list(_builtin_names())


@functools.cache
def _builtin_names() -> tuple[str, ...]:  # read once: sweeps load boards per point
    return tuple(sorted(n for n, p in data_files().items() if file_kind(p) == "fpga"))


def load_arch(name_or_path: str | Path, overrides: Iterable[str] = ()) -> FpgaArch:
    """A built-in board (``u280``, ``vhk158``) or a YAML file, with ``key=value`` overrides.

    Raises :class:`ArchError` naming the file and field for anything malformed or impossible.
    """
    values, sources, name, origin = _load_file(str(name_or_path), set())
    return _build(name, values, sources, list(overrides), origin)


def _load_file(spec: str, seen: set[str]) -> tuple[dict[str, Any], dict[str, str], str, str]:
    path = Path(spec)
    if spec in builtin_names():
        path = ARCH_DIR / f"{spec}.yaml"
    elif not (path.suffix in (".yaml", ".yml") or path.exists()):
        close = difflib.get_close_matches(spec, builtin_names(), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ArchError(
            f"unknown FPGA architecture '{spec}'{hint} (built-in: {', '.join(builtin_names())}; "
            "or pass a YAML file)"
        )
    if not path.is_file():
        raise ArchError(f"{path}: architecture file not found")
    key = str(path.resolve())
    if key in seen:
        raise ArchError(f"{path}: 'base' chain loops back to this file")
    seen.add(key)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ArchError(f"{path}: not valid YAML: {_one_line(str(e))}") from None
    if not isinstance(doc, dict):
        raise ArchError(f"{path}: expected a mapping of architecture fields at the top level")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    name = path.stem
    if "base" in doc:
        base = doc.pop("base")
        if not isinstance(base, str):
            raise ArchError(f"{path}: 'base' must name a board or a file")
        if base not in builtin_names() and not Path(base).is_absolute():
            base = str(path.parent / base)
        values, sources, name, _ = _load_file(base, seen)
    if "name" in doc:
        name = str(doc.pop("name"))
    kind = doc.pop("kind", "fpga")
    if kind != "fpga":
        raise ArchError(f"{path}: kind '{kind}' is not an FPGA board (kind: fpga)")
    for k, v in _flatten(doc).items():
        if k not in FIELD_BY_KEY:
            raise ArchError(f"{path}: unknown field '{k}'{_suggest(k)}")
        if isinstance(v, dict):
            if "value" not in v:
                raise ArchError(f"{path}: field '{k}' is a mapping without 'value'")
            sources[k] = str(v.get("source", "unspecified"))
            v = v["value"]
        else:
            sources[k] = f"{path.name}"
        values[k] = v
    return values, sources, name, str(path)


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "value" not in v and key not in FIELD_BY_KEY:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELD_BY_KEY), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _flatten_arch(a: FpgaArch) -> dict[str, Any]:
    return {f.key: a.get(f.key) for f in FIELDS}


def _coerce(f: Field, v: Any, where: str) -> Any:
    bad = ArchError(f"{where}: field '{f.key}' must be {_kind_text(f.kind)}, got {v!r}")
    if f.kind == "str":
        if not isinstance(v, str):
            raise bad
        return v
    if f.kind == "bool":
        if not isinstance(v, bool):
            raise bad
        return v
    if f.kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise bad
        return v
    if f.kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad
        return float(v)
    if f.kind in ("ints", "int3"):
        if not isinstance(v, (list, tuple)) or any(
            isinstance(x, bool) or not isinstance(x, int) for x in v
        ):
            raise bad
        if f.kind == "int3" and len(v) != 3:
            raise bad
        return tuple(int(x) for x in v)
    raise AssertionError(f.kind)


def _kind_text(kind: str) -> str:
    return {
        "str": "a string",
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "ints": "a list of integers",
        "int3": "a list of three integers",
    }[kind]


def _build(
    name: str, values: dict[str, Any], sources: dict[str, str], overrides: list[str], origin: str
) -> FpgaArch:
    values = dict(values)
    for ov in overrides:
        if "=" not in ov:
            raise ArchError(f"--set {ov!r}: expected KEY=VALUE (e.g. hbm.bandwidth_gbs=460)")
        k, _, raw = ov.partition("=")
        k = k.strip()
        if k not in FIELD_BY_KEY:
            raise ArchError(f"--set {ov!r}: unknown field '{k}'{_suggest(k)}")
        try:
            values[k] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ArchError(f"--set {ov!r}: value is not valid YAML") from None
        sources[k] = f"override (--set {ov.strip()})"
    where = origin or name
    missing = [f.key for f in FIELDS if f.key not in values]
    if missing:
        raise ArchError(f"{where}: missing field(s) {', '.join(missing)}")
    v = {f.key: _coerce(f, values[f.key], where) for f in FIELDS}
    for f in FIELDS:
        if f.rule is not None and not f.rule(v[f.key]):
            raise ArchError(
                f"{where}: field '{f.key}' = {_show(v[f.key])} is impossible (must be "
                f"{f.rule_text}; {f.doc})"
            )
    a = FpgaArch(
        name=name,
        description=v["description"],
        board=v["board"],
        clock_mhz=v["clock_mhz"],
        slrs=v["slrs"],
        cores=v["cores"],
        dsp=DspSpec(**{k[4:]: v[k] for k in v if k.startswith("dsp.")}),
        mm_unit=v["mm_unit"],
        mv_unit=v["mv_unit"],
        sfu_width=v["sfu_width"],
        sfu_latency=v["sfu_latency"],
        sparse_block=v["sparse_block"],
        sparse_nnz=v["sparse_nnz"],
        mask_block=v["mask_block"],
        max_tokens=v["max_tokens"],
        prefill_bucket=v["prefill_bucket"],
        decode_bucket=v["decode_bucket"],
        hbm=HbmSpec(**{k[4:]: v[k] for k in v if k.startswith("hbm.")}),
        ddr=DdrSpec(**{k[4:]: v[k] for k in v if k.startswith("ddr.")}),
        buffers=BufferSpec(**{k[8:]: v[k] for k in v if k.startswith("buffers.")}),
        onchip_mb=v["onchip_mb"],
        act_bytes=v["act_bytes"],
        issue_cycles=v["issue_cycles"],
        power_w=v["power_w"],
        price_usd=v["price_usd"],
        sources=dict(sources),
    )
    validate(a, where)
    return a


def _show(v: Any) -> str:
    return str(list(v)) if isinstance(v, tuple) else repr(v)


def validate(a: FpgaArch, where: str = "") -> None:
    """Cross-field rules (single-field ranges are checked by :data:`FIELDS`)."""
    where = where or a.name

    def fail(key: str, msg: str) -> None:
        raise ArchError(f"{where}: field '{key}' = {_show(a.get(key))}: {msg}")

    if a.cores > a.slrs:
        fail("cores", f"more cores than SLRs ({a.slrs}): a core does not span dies")
    b = a.sparse_block
    for n in a.sparse_nnz:
        if b % n:
            fail("sparse_nnz", f"{n} non-zeros do not divide a block row of {b}")
    if b not in a.sparse_nnz:
        fail("sparse_nnz", f"must include {b} (dense blocks)")
    for key, unit in (("mm_unit", a.mm_unit[1]), ("mv_unit", a.mv_unit[1])):
        if unit % b:
            fail(key, f"lanes ({unit}) must be a multiple of sparse_block ({b})")
    if a.dsp.chain_length % b and b % a.dsp.chain_length:
        fail("dsp.chain_length", f"must divide or be a multiple of sparse_block ({b})")
    if a.dsps_needed() > a.dsp.total:
        fail(
            "dsp.total",
            f"the units need {a.dsps_needed()} DSPs ({a.cores} core(s) of mm_unit "
            f"{list(a.mm_unit)} and mv_unit {list(a.mv_unit)} at {a.dsp.macs_per_dsp} MACs/DSP)",
        )
    if a.hbm.eff_cross > a.hbm.eff_same:
        fail("hbm.eff_cross", f"cross-channel efficiency above same-channel ({a.hbm.eff_same})")
    for key, q in (("prefill_bucket", a.prefill_bucket), ("decode_bucket", a.decode_bucket)):
        if a.max_tokens % q:
            fail(key, f"must divide max_tokens ({a.max_tokens})")
    if a.prefill_bucket % a.mask_block and a.mask_block % a.prefill_bucket:
        fail("mask_block", f"must divide or be a multiple of prefill_bucket ({a.prefill_bucket})")
    if a.buffers.total_kb() > a.onchip_mb * 1024:
        fail(
            "onchip_mb",
            f"the buffers need {a.buffers.total_kb() / 1024:.2f} MiB of on-chip memory",
        )
    # Each buffer holds at least one hardware tile (twice where it is double-buffered).
    kb = 1024.0
    rows = max(a.mm_unit[2], a.mv_unit[0])
    need_w = 2 * rows * b  # one int8 [rows, block] weight tile, double-buffered
    if a.buffers.weight_kb * kb < need_w:
        fail(
            "buffers.weight_kb", f"too small for one weight tile ({need_w} bytes, double-buffered)"
        )
    need_a = a.mm_unit[0] * a.mm_unit[1] * a.act_bytes + rows * a.act_bytes
    if a.buffers.act_kb * kb < need_a:
        fail("buffers.act_kb", f"too small for one activation tile ({need_a} bytes)")
    need_kv = 2 * a.mask_block * b * a.act_bytes
    if a.buffers.kv_kb * kb < need_kv:
        fail("buffers.kv_kb", f"too small for one K/V block ({need_kv} bytes, double-buffered)")
    need_i = 2 * a.prefill_bucket * 8
    if a.buffers.index_kb * kb < need_i:
        fail(
            "buffers.index_kb",
            f"too small for one bucket of token ids and positions ({need_i} bytes)",
        )
    if a.buffers.instr_kb * kb < 64:
        fail("buffers.instr_kb", "too small for two instructions")


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def fields_table() -> list[dict[str, str]]:
    """The field table as rows (key, type, rule, meaning) for docs and ``--help`` text."""
    return [{"key": f.key, "type": f.kind, "rule": f.rule_text, "meaning": f.doc} for f in FIELDS]


__all__ = [
    "ArchError",
    "BufferSpec",
    "DdrSpec",
    "DspSpec",
    "FIELDS",
    "FpgaArch",
    "HbmSpec",
    "builtin_names",
    "fields_table",
    "load_arch",
    "validate",
]


def check_override(text: str, flag: str = "--set") -> None:
    """Raise :class:`ArchError` when ``KEY=VALUE`` is wrong on its own: an unknown key, a value of
    the wrong type, or one the field's rule forbids. Whether it fits the rest of a board (enough
    DSPs for the units, ...) is :func:`validate`'s question: a sweep reports such points as
    infeasible instead of failing."""
    if "=" not in text:
        raise ArchError(f"{flag} {text!r}: expected KEY=VALUE (e.g. hbm.bandwidth_gbs=460)")
    k, _, raw = text.partition("=")
    k = k.strip()
    f = FIELD_BY_KEY.get(k)
    if f is None:
        raise ArchError(f"{flag} {text!r}: unknown field '{k}'{_suggest(k)}")
    try:
        v = _coerce(f, yaml.safe_load(raw), flag)
    except yaml.YAMLError:
        raise ArchError(f"{flag} {text!r}: value is not valid YAML") from None
    if f.rule is not None and not f.rule(v):
        raise ArchError(f"{flag} {text!r}: impossible value (must be {f.rule_text}; {f.doc})")


# ----------------------------------------------------------------------------------------------
# the ``fpga`` kind's hooks (llmc.targets.kinds)


def target_from_file(name: str, path: Path) -> Target:
    """The registry's target for a board file (the kind's ``build`` hook)."""
    a = load_arch(str(path))
    return Target(name, "fpga", a.description, None, a.hardware_spec(), {"arch": a})


def configure_target(tgt: Target, arch_file: str | None, sets: list[str]) -> Target:
    """``tgt`` with another board file and/or ``--set`` board fields (the ``configure`` hook)."""
    a = load_arch(arch_file or tgt.name, sets)
    return dataclasses.replace(
        tgt, description=a.description, spec=a.hardware_spec(), extra={"arch": a}
    )
