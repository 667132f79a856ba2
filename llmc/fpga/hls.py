"""HLS C++ emission: the FlightLLM accelerator as an instruction-driven Vitis HLS kernel.

The emitted project is the *machine*, not the model: a top level (``llmc_top``) that takes the HBM
image and an instruction stream over ``m_axi``, the runtime register ``R_POS`` over
``s_axilite``, decodes every 64-byte instruction with a decoder generated from
:data:`llmc.fpga.isa.FIELDS` and runs it, in program order, on the on-chip buffers (IDX, ACT, WGT,
KV) exactly as :class:`llmc.fpga.funcsim.Machine` does. The model (weights, tables, caches) is
data in the HBM image and the program is data in the streams, so one build serves every program
with the same buffer sizes. Layout::

    src/isa.h            generated from isa.py: opcodes, formats, flags, one struct per layout
    src/isa_decode.h     generated from isa.FIELDS: ap_uint<512> -> fields
    src/llmc_config.h    buffer sizes of the arch, MPE_K_MAX, fault kinds
    src/sfu.h            the SFU: numerics.py, operation for operation (constants as hex floats)
    src/mpe.h            the MPE: the sparse DSP chain of funcsim.py's docstring, in a dataflow
                         region (load / chain / store)
    src/llmc_top.{h,cpp} the top level: INTERFACE pragmas, LOAD/STORE units, dispatch
    csim/hls_stream.h    our hls::stream shim (C simulation with g++ only)
    csim/tb_llmc.cpp     the self-checking test bench (vectors/ -> PASS/FAIL, exit status)
    Makefile, run_csim.sh, vitis_hls.tcl, README.md

Every file comes from a template in ``templates/`` whose ``${name}`` slots are filled by the
function named after it below (``_slots_<file>``); :func:`render` refuses a missing or an unused
slot, so no template is ever scanned for markers and no slot is left unfilled.

Bit-exactness: every float32 operation of the SFU and the MPE is the one numerics.py / funcsim.py
performs, in the same order, each correctly rounded; the build forbids contraction into FMAs
(``-ffp-contract=off``, no ``-ffast-math``). :mod:`llmc.fpga.hls_vectors` records what the
functional simulator did so the test bench can compare the whole HBM image after every stream;
:mod:`llmc.fpga.hls_csim` builds the C simulation with g++ and runs it.

Example::

    prog = build_program(graph, load_arch("u280"))
    vec = make_vectors(prog, prompt_ids, decode_steps=4)
    info = emit_project(prog, Path("out/hls"), vectors=vec)   # {"files": [...], "top": ...}
    res = csim(Path("out/hls"))                               # res.passed, res.logits
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmc.errors import LlmcError
from llmc.fpga import isa
from llmc.fpga import numerics as nm

if TYPE_CHECKING:
    from llmc.fpga.arch import FpgaArch
    from llmc.fpga.hls_csim import CsimResult
    from llmc.fpga.hls_vectors import TestVectors
    from llmc.fpga.program import Program

TEMPLATES = Path(__file__).with_name("templates")
TOP = "llmc_top"
HLS4ML_VERSION = "1.3.0"
CXXFLAGS = ("-O2", "-std=c++17", "-ffp-contract=off")
VECTORS_VERSION = 1
CHAIN = 16  # inputs per sparse block (layout.py): the multipliers of one DSP chain

# Vitis parts of the built-in boards (anything else: set LLMC_PART when running vitis_hls.tcl).
PARTS = {"u280": "xcu280-fsvh2892-2L-e", "vhk158": "xcvh1582-vsva3697-2MP-e-S"}

# Fault kinds the C++ units return (index = kind); see llmc_config.h.
FAULTS: tuple[tuple[str, str], ...] = (
    ("none", "no fault"),
    ("opcode", "unknown opcode"),
    ("ldst_buf", "LD/ST names no on-chip buffer"),
    ("ldst_range", "LD/ST row outside HBM or the buffer"),
    ("align", "LD/ST HBM address, stride or row not a multiple of 4 bytes"),
    ("idx_range", "gather index read outside IDX"),
    ("act_range", "operand outside ACT"),
    ("wgt_range", "weight tile outside WGT"),
    ("kv_range", "K/V operand outside KV"),
    ("mpe_shape", "MPE k not a multiple of 16 or above MPE_K_MAX"),
    ("mpe_wbuf", "MPE weights neither in WGT nor in KV"),
    ("mpe_format", "MPE weight format, nnz or group not supported"),
    ("sfu_func", "unknown SFU function"),
)


class HlsError(LlmcError):
    """HLS emission or C simulation failed (the message says where and what to do)."""


class HlsToolchainError(HlsError):
    """A tool the C simulation needs (g++, the ap_types headers of hls4ml) is missing."""


# ----------------------------------------------------------------------------------------------
# templates


class Slots(string.Template):
    """A template whose slots are ``${lower_case}`` only: ``$(VAR)`` (make), ``$VAR`` and
    ``${VAR}`` (shell) and ``$x`` pass through untouched."""

    flags = 0  # case-sensitive: upper-case ${VAR} is the shell's
    pattern = r"""
    \$(?:
      (?P<escaped>(?!))
    | (?P<named>(?!))
    | \{(?P<braced>[a-z_][a-z0-9_]*)\}
    | (?P<invalid>(?!))
    )
    """


def template(name: str) -> Slots:
    path = TEMPLATES / name
    if not path.is_file():
        raise HlsError(f"HLS template {path} is missing: reinstall llmc (package data)")
    return Slots(path.read_text())


def render(name: str, slots: dict[str, str]) -> str:
    """Fill template ``name``; every slot must be given and every value must fill a slot."""
    t = template(name)
    want = set(t.get_identifiers())
    if want != set(slots):
        raise HlsError(
            f"template {name}: slots {sorted(want)} but the filler gives {sorted(slots)} "
            f"(missing {sorted(want - set(slots))}, unused {sorted(set(slots) - want)})"
        )
    return t.substitute(slots)


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class HlsConfig:
    """What the emitted sources depend on: the arch's buffers, the MPE row limit, the part."""

    arch: str
    act_words: int
    idx_words: int
    wgt_bytes: int
    kv_words: int
    k_max: int
    act_kb: float
    index_kb: float
    weight_kb: float
    kv_kb: float
    act_bytes: int
    part: str
    clock_mhz: float
    chain: int = CHAIN
    top: str = TOP

    @classmethod
    def for_arch(cls, arch: FpgaArch, k_max: int) -> HlsConfig:
        b = arch.buffers
        # The same sizes as funcsim.Machine (ACT at its cap: what the lowering may use).
        return cls(
            arch=arch.name,
            act_words=int(b.act_kb * 1024 / arch.act_bytes),
            idx_words=max(int(b.index_kb * 1024 // 4), 16),
            wgt_bytes=int(b.weight_kb * 1024),
            kv_words=int(b.kv_kb * 1024 / arch.act_bytes),
            k_max=k_max,
            act_kb=b.act_kb,
            index_kb=b.index_kb,
            weight_kb=b.weight_kb,
            kv_kb=b.kv_kb,
            act_bytes=arch.act_bytes,
            part=PARTS.get(arch.name, PARTS["u280"]),
            clock_mhz=arch.clock_mhz,
            chain=CHAIN,
        )

    @classmethod
    def for_program(cls, prog: Program) -> HlsConfig:
        """MPE_K_MAX: the longest MPE input row of the program (largest in_features, head_dim,
        or mask_block for P.V), rounded up to a power of two."""
        ks = [lin.k for lin in prog.linears.values()]
        ks += [int(v.type.shape[3]) for v in prog.cache_inputs.values()]
        ks.append(prog.arch.mask_block)
        k_max = CHAIN
        while k_max < max(ks):
            k_max *= 2
        return cls.for_arch(prog.arch, k_max)

    @property
    def buffers(self) -> tuple[int, int, int, int, int]:
        """What the test vectors record and the test bench checks against its build."""
        return (self.act_words, self.idx_words, self.wgt_bytes, self.kv_words, self.k_max)


# ----------------------------------------------------------------------------------------------
# generated code: the ISA


def _layouts() -> list[tuple[str, tuple[int, ...], tuple[tuple[str, int], ...]]]:
    """(struct name, opcodes, fields) per distinct instruction layout, by first opcode."""
    groups: dict[tuple[tuple[str, int], ...], list[int]] = {}
    for op in sorted(isa.FIELDS):
        groups.setdefault(isa.FIELDS[op], []).append(op)
    out = []
    for fs, ops in groups.items():
        if fs[0] != ("op", 4):
            raise HlsError(f"layout of {[isa.OP_NAMES[o] for o in ops]} must start with op:4")
        out.append(("".join(isa.OP_NAMES[o].capitalize() for o in ops), tuple(ops), fs))
    return sorted(out, key=lambda t: t[1][0])


def _const_block(title: str, items: list[tuple[str, int]]) -> str:
    lines = [f"// {title}"]
    lines += [f"static const uint32_t {n} = {v};" for n, v in items]
    return "\n".join(lines)


def _prefixed(prefix: str) -> list[tuple[str, int]]:
    return sorted(
        ((n, getattr(isa, n)) for n in dir(isa) if n.startswith(prefix) and n.isupper()),
        key=lambda t: t[1],
    )


def _isa_constants() -> str:
    blocks = [
        _const_block("opcodes", [(f"OP_{n}", c) for c, n in sorted(isa.OP_NAMES.items())]),
        _const_block(
            "units (bit positions in wait / release)",
            [(f"UNIT_{n.upper()}", i) for i, n in enumerate(isa.UNIT_NAMES)],
        ),
        _const_block("on-chip buffers", [(f"BUF_{n}", i) for i, n in enumerate(isa.BUF_NAMES)]),
        _const_block("load / store data classes", _prefixed("D_") + [("CH_DDR", isa.CH_DDR)]),
        _const_block("load modes", [(f"LD_MODE_{n[2:]}", v) for n, v in _prefixed("M_")]),
        _const_block(
            "weight formats", [(f"WFMT_{n.upper()}", i) for i, n in enumerate(isa.WFMT_NAMES)]
        ),
        "static const int WFMT_BITS[] = {" + ", ".join(map(str, isa.WFMT_BITS)) + "};",
        _const_block(
            "fused MPE epilogues", [(f"FUSE_{n.upper()}", i) for i, n in enumerate(isa.FUSE_NAMES)]
        ),
        _const_block(
            "SFU functions", [(f"SFU_{n.upper()}", i) for i, n in enumerate(isa.SFU_NAMES)]
        ),
        _const_block("SFU flags", _prefixed("SF_")),
        _const_block(
            "registers (R_POS is 0; token pruning's per-segment KV lengths)",
            [("N_REGS", isa.N_REGS)] + _prefixed("TOPK_"),
        ),
    ]
    return "\n\n".join(blocks)


def _isa_structs() -> str:
    out = []
    for name, ops, fs in _layouts():
        used = sum(b for _, b in fs)
        lines = [
            f"// {', '.join(isa.OP_NAMES[o] for o in ops)}: {used} of {isa.INSTR_BYTES * 8} bits",
            f"struct {name}Fields {{",
        ]
        pos = 0
        for fname, bits in fs:
            ctype = "uint32_t" if bits <= 32 else "uint64_t"
            lines.append(f"  {ctype} {fname};  // bits [{pos}, {pos + bits})")
            pos += bits
        lines.append("};")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _isa_decoders() -> str:
    out = []
    for name, _, fs in _layouts():
        lines = [
            f"static inline {name}Fields decode_{name.lower()}(const instr_word_t& w) {{",
            "#pragma HLS INLINE",
            f"  {name}Fields f;",
        ]
        pos = 0
        for fname, bits in fs:
            conv = "to_uint" if bits <= 32 else "to_uint64"
            lines.append(f"  f.{fname} = w.range({pos + bits - 1}, {pos}).{conv}();")
            pos += bits
        lines += ["  return f;", "}"]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _float_literal(v: float) -> str:
    if float(np.float32(v)) != v:
        raise HlsError(f"constant {v!r} is not a float32 value; numerics.CONSTANTS must be")
    return f"{v.hex()}f"


def _numerics_constants() -> str:
    return "\n".join(
        f"static const float K_{k} = {_float_literal(v)};  // {np.float32(v)}"
        for k, v in nm.CONSTANTS.items()
    )


def _faults() -> str:
    return "\n".join(
        f"static const uint32_t FAULT_{n.upper()} = {i};  // {d}"
        for i, (n, d) in enumerate(FAULTS)
        if i
    )


# ----------------------------------------------------------------------------------------------
# one slot filler per template


def _banner(cfg: HlsConfig, tmpl: str) -> str:
    return (
        f"Generated by llmc.fpga.hls for {cfg.arch} from templates/{tmpl}; edit the template, "
        "not this file."
    )


def _slots_isa_h(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "isa.h.tmpl"),
        "instr_bytes": str(isa.INSTR_BYTES),
        "constants": _isa_constants(),
        "structs": _isa_structs(),
    }


def _slots_isa_decode_h(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "isa_decode.h.tmpl"),
        "instr_bits": str(isa.INSTR_BYTES * 8),
        "op_hi": str(isa.FIELDS[isa.LD][0][1] - 1),
        "decoders": _isa_decoders(),
    }


def _slots_llmc_config_h(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "llmc_config.h.tmpl"),
        "arch": cfg.arch,
        "act_words": str(cfg.act_words),
        "idx_words": str(cfg.idx_words),
        "wgt_bytes": str(cfg.wgt_bytes),
        "wgt_words": str(-(-cfg.wgt_bytes // 4)),
        "kv_words": str(cfg.kv_words),
        "k_max": str(cfg.k_max),
        "chain": str(cfg.chain),
        "act_kb": f"{cfg.act_kb:g}",
        "index_kb": f"{cfg.index_kb:g}",
        "weight_kb": f"{cfg.weight_kb:g}",
        "kv_kb": f"{cfg.kv_kb:g}",
        "act_bytes": str(cfg.act_bytes),
        "faults": _faults(),
    }


def _slots_sfu_h(cfg: HlsConfig) -> dict[str, str]:
    return {"banner": _banner(cfg, "sfu.h.tmpl"), "constants": _numerics_constants()}


def _slots_mpe_h(cfg: HlsConfig) -> dict[str, str]:
    return {"banner": _banner(cfg, "mpe.h.tmpl")}


def _slots_llmc_top_h(cfg: HlsConfig) -> dict[str, str]:
    return {"banner": _banner(cfg, "llmc_top.h.tmpl"), "top": cfg.top}


def _slots_llmc_top_cpp(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "llmc_top.cpp.tmpl"),
        "top": cfg.top,
        "instr_bytes": str(isa.INSTR_BYTES),
    }


def _slots_hls_stream_h(cfg: HlsConfig) -> dict[str, str]:
    return {"banner": _banner(cfg, "hls_stream.h.tmpl")}


def _slots_tb_llmc_cpp(cfg: HlsConfig) -> dict[str, str]:
    names = ", ".join(json.dumps(n) for n, _ in FAULTS)
    return {
        "banner": _banner(cfg, "tb_llmc.cpp.tmpl"),
        "top": cfg.top,
        "vectors_version": str(VECTORS_VERSION),
        "fault_names": f"static const char* const FAULT_NAMES[] = {{{names}}};",
    }


def _slots_makefile(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "Makefile.tmpl"),
        "ap_types": str(find_ap_types(required=False) or ""),
        "cxx_flags": " ".join(CXXFLAGS),
        "top": cfg.top,
        "hls4ml_version": HLS4ML_VERSION,
    }


def _slots_run_csim_sh(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "run_csim.sh.tmpl"),
        "ap_types": str(find_ap_types(required=False) or ""),
        "cxx_flags": " ".join(CXXFLAGS),
        "top": cfg.top,
        "hls4ml_version": HLS4ML_VERSION,
    }


def _slots_vitis_hls_tcl(cfg: HlsConfig) -> dict[str, str]:
    return {
        "banner": _banner(cfg, "vitis_hls.tcl.tmpl"),
        "part": cfg.part,
        "top": cfg.top,
        "clock_ns": f"{1000.0 / cfg.clock_mhz:.3f}",
        "kernel_cflags": "-std=c++14 -ffp-contract=off",
        "tb_cflags": "-std=c++17 -ffp-contract=off",
    }


def _slots_readme_md(cfg: HlsConfig) -> dict[str, str]:
    return {
        "arch": cfg.arch,
        "top": cfg.top,
        "part": cfg.part,
        "clock_mhz": f"{cfg.clock_mhz:g}",
        "act_words": str(cfg.act_words),
        "idx_words": str(cfg.idx_words),
        "wgt_bytes": str(cfg.wgt_bytes),
        "kv_words": str(cfg.kv_words),
        "k_max": str(cfg.k_max),
        "cxx_flags": " ".join(CXXFLAGS),
        "hls4ml_version": HLS4ML_VERSION,
    }


@dataclass(frozen=True)
class ProjectFile:
    """One emitted file: where it goes, its template, the function that fills its slots."""

    path: str
    template: str
    slots: Callable[[HlsConfig], dict[str, str]]
    executable: bool = False

    def render(self, cfg: HlsConfig) -> str:
        return render(self.template, self.slots(cfg))


PROJECT_FILES: tuple[ProjectFile, ...] = (
    ProjectFile("src/isa.h", "isa.h.tmpl", _slots_isa_h),
    ProjectFile("src/isa_decode.h", "isa_decode.h.tmpl", _slots_isa_decode_h),
    ProjectFile("src/llmc_config.h", "llmc_config.h.tmpl", _slots_llmc_config_h),
    ProjectFile("src/sfu.h", "sfu.h.tmpl", _slots_sfu_h),
    ProjectFile("src/mpe.h", "mpe.h.tmpl", _slots_mpe_h),
    ProjectFile(f"src/{TOP}.h", "llmc_top.h.tmpl", _slots_llmc_top_h),
    ProjectFile(f"src/{TOP}.cpp", "llmc_top.cpp.tmpl", _slots_llmc_top_cpp),
    ProjectFile("csim/hls_stream.h", "hls_stream.h.tmpl", _slots_hls_stream_h),
    ProjectFile("csim/tb_llmc.cpp", "tb_llmc.cpp.tmpl", _slots_tb_llmc_cpp),
    ProjectFile("Makefile", "Makefile.tmpl", _slots_makefile),
    ProjectFile("run_csim.sh", "run_csim.sh.tmpl", _slots_run_csim_sh, executable=True),
    ProjectFile("vitis_hls.tcl", "vitis_hls.tcl.tmpl", _slots_vitis_hls_tcl),
    ProjectFile("README.md", "README.md.tmpl", _slots_readme_md),
)


def emit_project(
    prog: Program, out_dir: Path, *, vectors: TestVectors | None = None
) -> dict[str, Any]:
    """Write the HLS project into out_dir (created): kernels, top level, generated ISA decoder,
    stream shim, test bench, a Makefile / run_csim.sh that builds the C-simulation with g++ and
    the ap_types include path, a README.md saying how to build with Vitis HLS, and, with
    vectors, the test-vector files. Returns {"files": [relative paths], "top": <top function
    name>, ...}."""
    cfg = HlsConfig.for_program(prog)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for pf in PROJECT_FILES:
        path = out_dir / pf.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pf.render(cfg))
        if pf.executable:
            path.chmod(0o755)
        files.append(pf.path)
    if vectors is not None:
        from llmc.fpga.hls_vectors import write_vectors

        files += [f"vectors/{p}" for p in write_vectors(vectors, out_dir / "vectors", cfg)]
    return {
        "files": files,
        "top": cfg.top,
        "part": cfg.part,
        "clock_mhz": cfg.clock_mhz,
        "k_max": cfg.k_max,
        "buffers": dict(zip(("act_words", "idx_words", "wgt_bytes", "kv_words"), cfg.buffers)),
        "csim": "./run_csim.sh",
        "vectors": vectors is not None,
    }


# ----------------------------------------------------------------------------------------------
# C simulation (llmc.fpga.hls_csim)


def csim(out_dir: Path, *, timeout: float = 600, cache_dir: Path | None = None) -> CsimResult:
    """Compile the emitted project with g++ (-O2 -std=c++17 -ffp-contract=off) and run its test
    bench; result says passed, mismatches (first few with index/expected/got as hex), seconds,
    and the logits the C++ produced. With ``cache_dir``, projects with the same sources share
    one compiled binary there. Raises :class:`HlsToolchainError` when g++ or the hls4ml headers
    are missing, :class:`HlsError` when the code does not compile or the bench times out."""
    from llmc.fpga.hls_csim import run_csim

    return run_csim(out_dir, timeout=timeout, cache_dir=cache_dir)


def find_ap_types(*, required: bool = True) -> Path | None:
    """The ``ap_int.h`` / ``ap_fixed.h`` folder inside the installed hls4ml (not imported)."""
    from llmc.fpga.hls_csim import find_ap_types as _find

    return _find(required=required)


def find_cxx() -> str:
    """The C++ compiler of the C simulation: ``$CXX`` or g++."""
    from llmc.fpga.hls_csim import find_cxx as _find

    return _find()
