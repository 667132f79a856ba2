"""Streaming safetensors writes and memory-mapped reads (bounded compile and load memory).

``safetensors.torch.save_file`` needs every tensor in memory at once and serializes them into
one more buffer, so writing N bytes of weights peaks at about 2N. :func:`write_safetensors`
takes the tensors as a list of :class:`Entry` whose data is produced one at a time: the header
is computed from shapes and dtypes alone, then each tensor is produced, written and dropped, so
the peak is one tensor. The header is padded with spaces (which the format allows) so that the
data starts 64-byte aligned.

:func:`map_safetensors` reads a file (its header already validated by
:func:`llmc.frontends.checkpoint.read_safetensors_header`) as tensors that view a private
memory map of it: nothing is copied, pages are read from the page cache when first touched.

:func:`map_region` maps *one* tensor of an open file into a mapping of its own, so the tensor's
pages leave the process when the tensor is dropped (a compile that replaces a float weight by
its quantized codes frees the float pages; one map per file would hold them all until the end).
:func:`spill` moves a tensor made in anonymous memory (generated random weights) into an
unlinked temporary file mapped the same way: the pages are the kernel's page cache, which it
can write back and reclaim under memory pressure, so weights larger than RAM fit. Mapped file
pages count in a process's RSS (``RssFile``) while resident, but not in ``RssAnon``. Code that
makes weights calls :func:`keep` on each new tensor: inside a :func:`spilling` block (a compile)
the tensor is spilled, elsewhere it is returned as is (no disk traffic for tests, eval, ...).

Mapped pages stay in the process (and its RSS) once touched, until the map goes. A compile
reads every weight twice (calibration, then the artifact writer), so without help its RSS would
grow to the whole model: :func:`release` drops a mapped tensor's pages from the process
(``madvise(MADV_DONTNEED)`` on its map; they stay in the page cache and are faulted back in if
read again), after a calibration segment is done with its weights and after the writer has
written each tensor. It only ever drops clean file pages: a page of a private map that was
written to (a copy-on-write anonymous page, ``/proc/self/pagemap``) would be lost, so a tensor
with one is left alone.

Example::

    write_safetensors(path, [Entry("w", (2, 3), torch.float32, lambda: torch.ones(2, 3))])
    tensors = map_safetensors(path)             # {"w": tensor viewing the file}
    with spilling():                            # while compiling
        w = keep(torch.randn(4096, 4096))       # lives in an unlinked file in $TMPDIR
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from llmc.errors import LlmcError

#: torch dtype -> safetensors dtype name
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}
#: where the data section starts (a multiple of this, counted from the file's first byte)
DATA_ALIGN = 64


@dataclass(frozen=True)
class Entry:
    """One tensor of a file being written: its key, shape, dtype and a producer of its data."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * torch.empty((), dtype=self.dtype).element_size()


def write_safetensors(
    path: str | Path,
    entries: Sequence[Entry],
    metadata: dict[str, str] | None = None,
    *,
    on_tensor: Callable[[Entry, torch.Tensor], None] | None = None,
) -> None:
    """Write ``entries`` to ``path`` one tensor at a time; ``on_tensor(entry, tensor)`` sees
    each produced tensor before it is dropped (a mapped one's pages are then released:
    :func:`release`). A producer whose tensor has another shape or dtype than its entry declares
    raises :class:`LlmcError` (an internal error: the file is left incomplete; callers write
    into an artifact's temporary directory)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for e in entries:
        if e.dtype not in DTYPE_NAMES:
            raise LlmcError(f"{path}: tensor {e.key!r}: dtype {e.dtype} has no safetensors name")
        header[e.key] = {
            "dtype": DTYPE_NAMES[e.dtype],
            "shape": [int(d) for d in e.shape],
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-(8 + len(raw))) % DATA_ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            t = e.produce().detach()
            if tuple(t.shape) != tuple(int(d) for d in e.shape) or t.dtype != e.dtype:
                raise LlmcError(
                    f"{path}: tensor {e.key!r} was produced as {t.dtype} {list(t.shape)}, its "
                    f"entry says {e.dtype} {list(e.shape)} (internal error)"
                )
            t = t.contiguous().cpu()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            if on_tensor is not None:
                on_tensor(e, t)
            release(t)  # a view of a mapped weight: its pages leave the process (written)
            del t


#: start address -> (length, weak reference) of every live map made here (what release() may drop)
_MAPS: dict[int, tuple[int, weakref.ref[mmap.mmap]]] = {}
_PAGE = mmap.PAGESIZE


def _register(mm: mmap.mmap, start: int) -> None:
    """Record ``mm`` (mapped at address ``start``) until it is unmapped."""

    def gone(ref: weakref.ref[mmap.mmap], start: int = start) -> None:
        if _MAPS.get(start, (0, None))[1] is ref:
            del _MAPS[start]

    _MAPS[start] = (len(mm), weakref.ref(mm, gone))


def _has_private_pages(lo: int, hi: int) -> bool:
    """Whether a present page of ``[lo, hi)`` (page-aligned) is not a file page: a private map's
    page that was written to (``/proc/self/pagemap`` bit 63 present, bit 61 file page).
    Unreadable pagemap: True (nothing is dropped)."""
    import numpy as np

    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return True
    try:
        n = (hi - lo) // _PAGE
        step = 1 << 16  # pages per read (512 KiB of entries)
        for first in range(0, n, step):
            k = min(step, n - first)
            raw = os.pread(fd, 8 * k, 8 * (lo // _PAGE + first))
            if len(raw) != 8 * k:
                return True
            e = np.frombuffer(raw, dtype=np.uint64)
            if bool(((e >> np.uint64(63)) & ~(e >> np.uint64(61)) & np.uint64(1)).any()):
                return True
        return False
    finally:
        os.close(fd)


def release(t: torch.Tensor) -> bool:
    """Drop the resident pages of ``t``'s bytes from the process if ``t`` views a map made here
    (:func:`map_region`, :func:`map_safetensors`, :func:`spill`); its values are unchanged (the
    pages are read back from the file, usually the page cache, when touched again). Returns
    whether pages were dropped; anonymous tensors, and maps with written (private) pages, are
    left alone."""
    if t.device.type != "cpu" or not _MAPS:
        return False
    st = t.untyped_storage()
    lo = st.data_ptr()
    hi = lo + st.nbytes()
    # a copy made in one C call: building a list of items allocates, an allocation can run the
    # cycle collector, and a map it frees drops out of _MAPS (_register's callback) mid-walk
    for start, (length, ref) in _MAPS.copy().items():
        if start <= lo < start + length:
            mm = ref()
            if mm is None:
                return False
            a = -(-(lo - start) // _PAGE) * _PAGE  # whole pages inside the tensor only
            b = (min(hi, start + length) - start) // _PAGE * _PAGE
            if b <= a or _has_private_pages(start + a, start + b):
                return False
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)
            return True
    return False


def map_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` as a view of a private (copy-on-write) memory map of the file.

    The caller validates the header first (:func:`~llmc.frontends.checkpoint.
    read_safetensors_header` checks that offsets lie inside the file and do not overlap)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        size = f.seek(0, 2)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    base = 8 + n
    if mm is not None:
        _register(mm, torch.frombuffer(mm, dtype=torch.uint8, count=1).data_ptr())
    out: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _BY_NAME[info["dtype"]]
        begin, end = (int(x) for x in info["data_offsets"])
        shape = [int(d) for d in info["shape"]]
        if end == begin or mm is None:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=end - begin, offset=base + begin)
        out[key] = flat.view(dtype).reshape(shape)
    return out


def map_region(
    fd: int, offset: int, shape: Sequence[int], dtype: torch.dtype, nbytes: int
) -> torch.Tensor:
    """The tensor at ``[offset, offset + nbytes)`` of the open file ``fd``, as a view of a
    private (copy-on-write) map of just that region (from the page boundary below ``offset``).
    The map lives as long as the tensor (or a view of it); the caller has checked that the
    region lies inside the file (a file truncated afterwards faults on access, as any mapped
    file does)."""
    if nbytes == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(fd, nbytes + offset - start, access=mmap.ACCESS_COPY, offset=start)
    flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset - start)
    _register(mm, flat.data_ptr() - (offset - start))
    return flat.view(dtype).reshape(tuple(shape))


def spill(t: torch.Tensor, directory: str | Path | None = None) -> torch.Tensor:
    """``t``'s values in an unlinked temporary file in ``directory`` (default: the system's
    temporary directory), returned as a mapped view (see the module docstring): the anonymous
    copy can be dropped, and the file's disk space is freed with the last view."""
    t = t.detach().contiguous().cpu()
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return t
    with tempfile.TemporaryFile(dir=directory) as f:
        f.write(t.reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        return map_region(f.fileno(), 0, t.shape, t.dtype, nbytes)


#: the directory :func:`keep` spills to ("" = the system's temporary directory), or None: off
_SPILL_DIR: ContextVar[str | None] = ContextVar("llmc_spill_dir", default=None)
#: tensors smaller than this stay in memory (a file and a map each would cost more than they save)
SPILL_MIN_BYTES = 1 << 20


@contextlib.contextmanager
def spilling(directory: str | Path | None = None) -> Iterator[None]:
    """Within the block, :func:`keep` spills weights to ``directory`` (default ``$TMPDIR``)."""
    token = _SPILL_DIR.set(str(directory) if directory is not None else "")
    try:
        yield
    finally:
        _SPILL_DIR.reset(token)


def keep(t: torch.Tensor) -> torch.Tensor:
    """A new weight tensor as it should be kept: spilled (:func:`spill`) inside a
    :func:`spilling` block when it holds at least ``SPILL_MIN_BYTES``, else ``t`` itself."""
    d = _SPILL_DIR.get()
    if d is None or t.device.type != "cpu" or t.numel() * t.element_size() < SPILL_MIN_BYTES:
        return t
    return spill(t, d or None)
