"""Inspect GPU code objects without a GPU: AMDGPU (HSA) code objects and CUDA cubins.

Used by tests and by artifact checks to prove a cross-compiled build holds real device code:
the ELF machine (``EM_AMDGPU`` = 224, ``EM_CUDA`` = 190), the GPU architecture encoded in
``e_flags`` (``gfx942``, ``sm_90``), the code-object version, the kernel symbols, and a disassembly.

Pure Python ELF64 little-endian parsing (header, section headers, symbol tables, notes); only the
disassembly runs a tool (``llvm-objdump``, see :mod:`llmc.backends.toolchain`).
The fatbin that wraps a CUDA artifact's cubins (with PTX beside them) is read by
:mod:`llmc.backends.fatbin`.

>>> objs = find_code_objects(Path("out/mi300x/model.so").read_bytes())  # doctest: +SKIP
>>> objs[0].arch, objs[0].code_object_version, objs[0].kernels        # doctest: +SKIP
('gfx942', 6, ('fused_rms_norm_kernel', ...))
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from dataclasses import dataclass

from llmc.errors import LlmcError

EM_CUDA = 190
EM_AMDGPU = 224
ELFOSABI_AMDGPU_HSA = 64
ET_NAMES = {0: "NONE", 1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}
SHT_SYMTAB, SHT_NOTE, SHT_NOBITS, SHT_DYNSYM = 2, 7, 8, 11
STT_NAMES = {0: "NOTYPE", 1: "OBJECT", 2: "FUNC", 3: "SECTION", 4: "FILE", 10: "GNU_IFUNC"}
STB_NAMES = {0: "LOCAL", 1: "GLOBAL", 2: "WEAK", 10: "GNU_UNIQUE"}
NT_AMDGPU_METADATA = 32

#: EI_ABIVERSION of an HSA code object -> code-object version (LLVM ``ELFABIVERSION_AMDGPU_HSA_V*``).
AMDGPU_HSA_CODE_OBJECT_VERSION = {0: 2, 1: 3, 2: 4, 3: 5, 4: 6}

#: ``e_flags & EF_AMDGPU_MACH`` -> processor (LLVM ``include/llvm/BinaryFormat/ELF.h``).
EF_AMDGPU_MACH = 0x0FF
AMDGPU_MACH = {
    0x020: "gfx600", 0x021: "gfx601", 0x022: "gfx700", 0x023: "gfx701", 0x024: "gfx702",
    0x025: "gfx703", 0x026: "gfx704", 0x028: "gfx801", 0x029: "gfx802", 0x02A: "gfx803",
    0x02B: "gfx810", 0x02C: "gfx900", 0x02D: "gfx902", 0x02E: "gfx904", 0x02F: "gfx906",
    0x030: "gfx908", 0x031: "gfx909", 0x032: "gfx90c", 0x033: "gfx1010", 0x034: "gfx1011",
    0x035: "gfx1012", 0x036: "gfx1030", 0x037: "gfx1031", 0x038: "gfx1032", 0x039: "gfx1033",
    0x03A: "gfx602", 0x03B: "gfx705", 0x03C: "gfx805", 0x03D: "gfx1035", 0x03E: "gfx1034",
    0x03F: "gfx90a", 0x040: "gfx940", 0x041: "gfx1100", 0x042: "gfx1013", 0x043: "gfx1150",
    0x044: "gfx1103", 0x045: "gfx1036", 0x046: "gfx1101", 0x047: "gfx1102", 0x048: "gfx1200",
    0x04A: "gfx1151", 0x04B: "gfx941", 0x04C: "gfx942", 0x04E: "gfx1201", 0x04F: "gfx950",
    0x051: "gfx9-generic", 0x052: "gfx10-1-generic", 0x053: "gfx10-3-generic",
    0x054: "gfx11-generic", 0x055: "gfx1152", 0x058: "gfx1153", 0x059: "gfx12-generic",
    0x05F: "gfx9-4-generic",
}  # fmt: skip
EF_AMDGPU_FEATURE_XNACK_V4, EF_AMDGPU_FEATURE_SRAMECC_V4 = 0x300, 0xC00
_FEATURE_V4 = {0: "unsupported", 1: "any", 2: "off", 3: "on"}

#: Oldest LLVM whose disassembler knows the processor (older ones refuse the code object).
MIN_LLVM_FOR_ARCH = {"gfx90a": 13, "gfx940": 15, "gfx941": 17, "gfx942": 17, "gfx950": 20}


class ElfError(LlmcError):
    """Bytes that are not the ELF object the caller expected (the message says what is wrong)."""


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    type: str  # FUNC, OBJECT, ...
    binding: str  # LOCAL, GLOBAL, WEAK
    section: int
    value: int
    size: int


@dataclass(frozen=True)
class ElfSection:
    name: str
    type: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class ElfNote:
    owner: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfObject:
    """The parts of an ELF64 little-endian object that GPU checks need."""

    data: bytes
    e_type: str  # REL, DYN, ...
    e_machine: int
    e_flags: int
    osabi: int
    abi_version: int
    sections: tuple[ElfSection, ...]
    symbols: tuple[ElfSymbol, ...]
    notes: tuple[ElfNote, ...]

    def section(self, name: str) -> ElfSection | None:
        return next((s for s in self.sections if s.name == name), None)


@dataclass(frozen=True)
class AmdgpuCodeObject:
    """An AMDGPU HSA code object (what ``hipModuleLoadData`` takes)."""

    elf: ElfObject
    arch: str  # from e_flags, e.g. "gfx942"
    code_object_version: int  # from EI_ABIVERSION, e.g. 6
    xnack: str  # unsupported | any | off | on
    sramecc: str
    target_id: str | None  # ``amdhsa.target`` of the metadata note: "amdgcn-amd-amdhsa-hcc-gfx942"
    kernels: tuple[str, ...]  # symbols with a kernel descriptor (``NAME.kd``)
    metadata: dict[str, object]  # the decoded NT_AMDGPU_METADATA note (empty if there is none)

    @property
    def data(self) -> bytes:
        return self.elf.data


@dataclass(frozen=True)
class CudaCubin:
    """A CUDA cubin (SASS for one ``sm_XX``)."""

    elf: ElfObject
    arch: str  # e.g. "sm_90"
    kernels: tuple[str, ...]  # global FUNC symbols

    @property
    def data(self) -> bytes:
        return self.elf.data


# ------------------------------------------------------------------------------- ELF parsing


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    return blob[off : end if end >= 0 else len(blob)].decode("utf-8", "replace")


def elf_extent(data: bytes) -> int:
    """Bytes an ELF64 object occupies from its start (its section headers come last)."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF object (no \\x7fELF magic)")
    if data[4] != 2 or data[5] != 1:
        raise ElfError(f"only ELF64 little-endian is supported (class {data[4]}, data {data[5]})")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    end = max(64, shoff + shnum * shentsize, phoff + phnum * phentsize)
    for i in range(shnum):
        off = shoff + i * shentsize
        if off + 64 > len(data):
            raise ElfError(f"section header {i} lies past the end ({off} + 64 > {len(data)} bytes)")
        sh_type, _, _, sh_offset, sh_size = struct.unpack_from("<IQQQQ", data, off + 4)
        if sh_type != SHT_NOBITS:
            end = max(end, sh_offset + sh_size)
    if end > len(data):
        raise ElfError(f"truncated ELF object: needs {end} bytes, has {len(data)}")
    return end


def parse_elf(data: bytes) -> ElfObject:
    """Parse an ELF64 little-endian object (trailing bytes after it are ignored)."""
    data = bytes(data[: elf_extent(data)])
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    (e_flags,) = struct.unpack_from("<I", data, 0x30)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = []
    for i in range(shnum):
        name, sh_type, _, _, off, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * shentsize
        )
        raw.append((name, sh_type, off, size, link))
    shstr = b""
    if 0 < shstrndx < len(raw):
        _, _, off, size, _ = raw[shstrndx]
        shstr = data[off : off + size]
    sections = tuple(ElfSection(_cstr(shstr, n), t, o, s, lk) for n, t, o, s, lk in raw)

    symbols: list[ElfSymbol] = []
    notes: list[ElfNote] = []
    for sec in sections:
        body = data[sec.offset : sec.offset + sec.size]
        if sec.type in (SHT_SYMTAB, SHT_DYNSYM) and 0 <= sec.link < len(sections):
            strtab = sections[sec.link]
            strs = data[strtab.offset : strtab.offset + strtab.size]
            for off in range(24, len(body) - 23, 24):  # entry 0 is the null symbol
                st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from(
                    "<IBBHQQ", body, off
                )
                symbols.append(
                    ElfSymbol(
                        name=_cstr(strs, st_name),
                        type=STT_NAMES.get(st_info & 0xF, str(st_info & 0xF)),
                        binding=STB_NAMES.get(st_info >> 4, str(st_info >> 4)),
                        section=st_shndx,
                        value=st_value,
                        size=st_size,
                    )
                )
        elif sec.type == SHT_NOTE:
            notes += _parse_notes(body)
    return ElfObject(
        data=data,
        e_type=ET_NAMES.get(e_type, str(e_type)),
        e_machine=e_machine,
        e_flags=e_flags,
        osabi=data[7],
        abi_version=data[8],
        sections=sections,
        symbols=tuple(symbols),
        notes=tuple(notes),
    )


def _parse_notes(body: bytes) -> list[ElfNote]:
    notes, off = [], 0
    while off + 12 <= len(body):
        namesz, descsz, ntype = struct.unpack_from("<III", body, off)
        off += 12
        name = body[off : off + namesz].rstrip(b"\0").decode("utf-8", "replace")
        off += (namesz + 3) & ~3
        notes.append(ElfNote(name, ntype, body[off : off + descsz]))
        off += (descsz + 3) & ~3
    return notes


def unpack_msgpack(buf: bytes) -> object:
    """Decode one MessagePack value (the encoding of the AMDGPU metadata note, code object v3+)."""
    value, end = _unpack(buf, 0)
    if end != len(buf):
        raise ElfError(f"{len(buf) - end} trailing bytes after MessagePack metadata")
    return value


def _unpack(b: bytes, i: int) -> tuple[object, int]:
    if i >= len(b):
        raise ElfError("truncated MessagePack metadata")
    t = b[i]
    i += 1
    fixed = {0xC0: None, 0xC2: False, 0xC3: True}
    if t in fixed:
        return fixed[t], i
    if t <= 0x7F or t >= 0xE0:  # positive / negative fixint
        return (t if t <= 0x7F else t - 0x100), i
    scalars = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}
    scalars |= {0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if t in scalars:
        fmt = scalars[t]
        return struct.unpack_from(fmt, b, i)[0], i + struct.calcsize(fmt)
    lengths = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
    lengths |= {0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
    if 0xA0 <= t <= 0xBF:
        kind, n = "str", t & 0x1F
    elif 0x90 <= t <= 0x9F:
        kind, n = "array", t & 0x0F
    elif 0x80 <= t <= 0x8F:
        kind, n = "map", t & 0x0F
    elif t in lengths:
        kind = {0xC4: "bin", 0xC5: "bin", 0xC6: "bin", 0xDC: "array", 0xDD: "array"}.get(t, "str")
        kind = "map" if t in (0xDE, 0xDF) else kind
        n = struct.unpack_from(lengths[t], b, i)[0]
        i += struct.calcsize(lengths[t])
    else:
        raise ElfError(f"unsupported MessagePack type byte {t:#x} in metadata")
    if kind in ("str", "bin"):
        if i + n > len(b):
            raise ElfError("truncated MessagePack metadata")
        raw = b[i : i + n]
        return (raw.decode("utf-8", "replace") if kind == "str" else raw), i + n
    if kind == "array":
        items = []
        for _ in range(n):
            v, i = _unpack(b, i)
            items.append(v)
        return items, i
    out: dict[object, object] = {}
    for _ in range(n):
        k, i = _unpack(b, i)
        v, i = _unpack(b, i)
        out[k if not isinstance(k, list) else tuple(k)] = v
    return out, i


# ------------------------------------------------------------------------------- AMDGPU


def amdgpu_arch(e_flags: int) -> str:
    """The processor an AMDGPU code object was built for, from its ELF ``e_flags``."""
    mach = e_flags & EF_AMDGPU_MACH
    if mach not in AMDGPU_MACH:
        raise ElfError(f"unknown AMDGPU EF_AMDGPU_MACH value {mach:#x} (e_flags {e_flags:#x})")
    return AMDGPU_MACH[mach]


def read_code_object(data: bytes) -> AmdgpuCodeObject:
    """Parse an AMDGPU HSA code object; :class:`ElfError` if ``data`` is anything else."""
    elf = parse_elf(data)
    if elf.e_machine != EM_AMDGPU:
        raise ElfError(f"not an AMDGPU code object: e_machine {elf.e_machine}, not {EM_AMDGPU}")
    if elf.osabi != ELFOSABI_AMDGPU_HSA:
        raise ElfError(f"not an HSA code object: EI_OSABI {elf.osabi}, not {ELFOSABI_AMDGPU_HSA}")
    metadata: dict[str, object] = {}
    for note in elf.notes:
        if note.owner == "AMDGPU" and note.type == NT_AMDGPU_METADATA:
            decoded = unpack_msgpack(note.desc)
            if isinstance(decoded, dict):
                metadata = {str(k): v for k, v in decoded.items()}
    target = metadata.get("amdhsa.target")
    names = {s.name for s in elf.symbols}
    kernels = {s.name[: -len(".kd")] for s in elf.symbols if s.name.endswith(".kd")}
    return AmdgpuCodeObject(
        elf=elf,
        arch=amdgpu_arch(elf.e_flags),
        code_object_version=AMDGPU_HSA_CODE_OBJECT_VERSION.get(elf.abi_version, -1),
        xnack=_FEATURE_V4[(elf.e_flags & EF_AMDGPU_FEATURE_XNACK_V4) >> 8],
        sramecc=_FEATURE_V4[(elf.e_flags & EF_AMDGPU_FEATURE_SRAMECC_V4) >> 10],
        target_id=target if isinstance(target, str) else None,
        kernels=tuple(sorted(kernels & names)),
        metadata=metadata,
    )


def _embedded_elfs(blob: bytes, machine: int) -> list[ElfObject]:
    found, start = [], 0
    while (at := blob.find(b"\x7fELF", start)) >= 0:
        start = at + 4
        if len(blob) - at < 64 or struct.unpack_from("<H", blob, at + 18)[0] != machine:
            continue
        try:
            elf = parse_elf(blob[at:])
        except (ElfError, struct.error):
            continue
        found.append(elf)
        start = at + len(elf.data)
    return found


def find_code_objects(blob: bytes) -> list[AmdgpuCodeObject]:
    """Every AMDGPU code object embedded in ``blob`` (an exported TVM ``.so``, a bundle, ...)."""
    out = []
    for elf in _embedded_elfs(blob, EM_AMDGPU):
        try:
            out.append(read_code_object(elf.data))
        except ElfError:
            continue
    return out


def disassemble(code: AmdgpuCodeObject | bytes, objdump: str | None = None) -> str:
    """``llvm-objdump -d`` of a code object (needs an LLVM that knows its processor).

    Raises :class:`~llmc.backends.toolchain.ToolchainError` when no suitable llvm-objdump exists.
    """
    from llmc.backends.toolchain import ToolFailedError, find_llvm_objdump

    co = code if isinstance(code, AmdgpuCodeObject) else read_code_object(code)
    tool = objdump or find_llvm_objdump(MIN_LLVM_FOR_ARCH.get(co.arch, 0))
    with tempfile.NamedTemporaryFile(suffix=".co") as f:
        f.write(co.data)
        f.flush()
        proc = subprocess.run(
            [tool, "-d", f.name],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if proc.returncode != 0:
        raise ToolFailedError(f"{tool} -d failed on a {co.arch} code object: {proc.stderr.strip()}")
    return proc.stdout


def instructions(disassembly: str) -> list[str]:
    """The instruction lines of an ``llvm-objdump -d`` listing (tab-indented, mnemonic first)."""
    return [
        ln.strip().split("//")[0].strip()
        for ln in disassembly.splitlines()
        if ln.startswith("\t") and ln.strip() and not ln.strip().startswith("//")
    ]


# ------------------------------------------------------------------------------- CUDA


def cuda_arch(elf: ElfObject) -> str:
    """``sm_XX`` of a cubin, from ``e_flags`` (its layout changed with ELF ABI version 8)."""
    sm = (elf.e_flags >> 8) & 0xFF if elf.abi_version >= 8 else elf.e_flags & 0xFF
    if sm == 0:
        raise ElfError(f"no SM version in cubin e_flags {elf.e_flags:#x}")
    return f"sm_{sm}"


def read_cubin(data: bytes) -> CudaCubin:
    """Parse a CUDA cubin; :class:`ElfError` if ``data`` is anything else."""
    elf = parse_elf(data)
    if elf.e_machine != EM_CUDA:
        raise ElfError(f"not a CUDA cubin: e_machine {elf.e_machine}, not {EM_CUDA}")
    kernels = tuple(
        sorted({s.name for s in elf.symbols if s.type == "FUNC" and s.binding == "GLOBAL"})
    )
    return CudaCubin(elf=elf, arch=cuda_arch(elf), kernels=kernels)


def find_cubins(blob: bytes) -> list[CudaCubin]:
    """Every cubin embedded in ``blob`` (a fatbin, an exported ``.so``, ...)."""
    out = []
    for elf in _embedded_elfs(blob, EM_CUDA):
        try:
            out.append(read_cubin(elf.data))
        except ElfError:
            continue
    return out
