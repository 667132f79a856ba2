"""Read CUDA fatbins without a GPU: which cubins (SASS) and which PTX a build carries.

A fatbin (what ``nvcc --fatbin`` writes, and what :mod:`llmc.backends.export` embeds in a CUDA
artifact's ``model.so``) is a 16-byte header followed by entries, each a header and a payload:

=======  ====  ===========================================================================
offset   size  field (little-endian)
=======  ====  ===========================================================================
0        4     magic ``0xBA55ED50``
4        2     version (1)
6        2     header size (16)
8        8     bytes of entries that follow
=======  ====  ===========================================================================

Each entry: ``u16 kind`` (1 = PTX, 2 = ELF cubin), ``u16`` format version, ``u32`` entry header
size, ``u64`` payload size (padded), ``u32`` compressed size, ``u32`` (unused here), ``u16``
minor and ``u16`` major version (PTX ISA, or the cubin's ELF ABI), ``u32`` SM number (90 for
``sm_90`` / ``compute_90``), ``u32`` name offset, ``u32`` name length, ``u64`` flags, ``u64`` zero,
``u64`` uncompressed size. Payloads may be compressed: CUDA 13's nvcc compresses PTX with zstd
(flag ``0x8000``; the payload starts with the zstd magic), older ones used LZ4 (flag ``0x2000``).
The layout was read off ``nvcc 13.0 --fatbin -arch=sm_90`` output (one ``sm_90`` cubin, one zstd
PTX for ``compute_90``) and matches what ``cuobjdump -lelf -lptx`` lists for it.

Compressed PTX is expanded by the ``zstd`` command (a tool, like ``llvm-objdump`` in
:mod:`llmc.backends.elfcheck`); everything else is pure Python.

>>> fb = find_fatbins(Path("out/h100/model.so").read_bytes())[0]   # doctest: +SKIP
>>> [(e.kind, e.arch) for e in fb.entries]                          # doctest: +SKIP
[('elf', 'sm_90'), ('ptx', 'sm_90')]
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

from llmc.backends.elfcheck import CudaCubin, ElfError, read_cubin

FATBIN_MAGIC = 0xBA55ED50
_MAGIC_BYTES = struct.pack("<I", FATBIN_MAGIC)
ENTRY_KINDS = {1: "ptx", 2: "elf"}
FLAG_COMPRESSED_LZ4 = 0x2000
FLAG_COMPRESSED_ZSTD = 0x8000
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ENTRY_MIN = 64


@dataclass(frozen=True)
class FatbinEntry:
    """One entry of a fatbin: a cubin for ``sm_XX`` or PTX for ``compute_XX``."""

    kind: str  # "ptx" | "elf"
    arch: str  # "sm_90" (PTX entries too: the SM number the PTX targets)
    version: tuple[int, int]  # (major, minor): PTX ISA version, or the cubin's ELF ABI version
    flags: int
    payload: bytes  # as stored (compressed when ``compression`` is set)
    uncompressed_size: int

    @property
    def compression(self) -> str | None:
        if self.payload[:4] == ZSTD_MAGIC or self.flags & FLAG_COMPRESSED_ZSTD:
            return "zstd"
        if self.flags & FLAG_COMPRESSED_LZ4:
            return "lz4"
        return None


@dataclass(frozen=True)
class Fatbin:
    """A parsed fatbin: its entries in file order."""

    entries: tuple[FatbinEntry, ...]
    size: int  # bytes the fatbin occupies, header included

    def archs(self, kind: str) -> set[str]:
        """The SM versions of the entries of one kind (``"elf"`` or ``"ptx"``)."""
        return {e.arch for e in self.entries if e.kind == kind}

    def cubins(self) -> list[CudaCubin]:
        """The cubins, parsed (uncompressed ELF entries only; nvcc does not compress them)."""
        return [
            read_cubin(e.payload) for e in self.entries if e.kind == "elf" and not e.compression
        ]


def read_fatbin(data: bytes) -> Fatbin:
    """Parse the fatbin at the start of ``data``; :class:`ElfError` if it is not one."""
    if len(data) < 16:
        raise ElfError(f"not a CUDA fatbin: {len(data)} bytes, the header alone is 16")
    magic, version, header_size, body = struct.unpack_from("<IHHQ", data, 0)
    if magic != FATBIN_MAGIC:
        raise ElfError(f"not a CUDA fatbin: magic {magic:#x}, not {FATBIN_MAGIC:#x}")
    if version != 1 or header_size < 16:
        raise ElfError(f"unsupported fatbin header (version {version}, size {header_size})")
    end = header_size + body
    if end > len(data):
        raise ElfError(f"truncated fatbin: needs {end} bytes, has {len(data)}")
    entries, off = [], header_size
    while off < end:
        if off + _ENTRY_MIN > end:
            raise ElfError(f"fatbin entry header at {off} runs past the fatbin's end ({end})")
        kind, _, hsize, size, csize = struct.unpack_from("<HHIQI", data, off)
        minor, major, sm = struct.unpack_from("<HHI", data, off + 24)
        flags, _, usize = struct.unpack_from("<QQQ", data, off + 40)
        if kind not in ENTRY_KINDS or hsize < _ENTRY_MIN or off + hsize + size > end:
            raise ElfError(
                f"bad fatbin entry at {off}: kind {kind}, header {hsize} B, payload {size} B"
            )
        start = off + hsize
        stored = csize if 0 < csize <= size else size  # the payload is padded to 8 bytes
        entries.append(
            FatbinEntry(
                kind=ENTRY_KINDS[kind],
                arch=f"sm_{sm}",
                version=(major, minor),
                flags=flags,
                payload=bytes(data[start : start + stored]),
                uncompressed_size=usize or stored,
            )
        )
        off = start + size
    return Fatbin(entries=tuple(entries), size=end)


def find_fatbins(blob: bytes) -> list[Fatbin]:
    """Every fatbin embedded in ``blob`` (an exported ``model.so``, a ``.fatbin`` file, ...)."""
    out, start = [], 0
    while (at := blob.find(_MAGIC_BYTES, start)) >= 0:
        try:
            fb = read_fatbin(blob[at:])
        except (ElfError, struct.error):
            start = at + 4
            continue
        out.append(fb)
        start = at + fb.size
    return out


def ptx_text(entry: FatbinEntry, zstd: str | None = None) -> str:
    """The PTX source of a PTX entry, expanded with the ``zstd`` command when compressed.

    Raises :class:`~llmc.backends.toolchain.ToolchainError` when the entry is compressed and no
    ``zstd`` is installed (``apt-get install zstd``), or with LZ4 (not supported here).
    """
    from llmc.backends.toolchain import ToolchainError, ToolFailedError

    if entry.kind != "ptx":
        raise ElfError(f"a {entry.kind} entry for {entry.arch} holds no PTX")
    method = entry.compression
    if method is None:
        return entry.payload.rstrip(b"\0").decode("utf-8", "replace")
    if method != "zstd":
        raise ToolchainError(f"PTX for {entry.arch} is {method}-compressed; only zstd is read")
    tool = zstd or shutil.which("zstd")
    if tool is None:
        raise ToolchainError(
            "PTX in this fatbin is zstd-compressed: install zstd (apt-get install zstd)"
        )
    proc = subprocess.run(
        [tool, "-d", "-c", "-q"], input=entry.payload, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise ToolFailedError(
            f"{tool} -d failed on {entry.arch} PTX: {proc.stderr.decode()[-500:]}"
        )
    return proc.stdout.rstrip(b"\0").decode("utf-8", "replace")
