"""Running a compiled TVM artifact with only the TVM *runtime* (no compiler on the deployment box).

::

    from llmc.runtime.tvm_runner import load
    lm = load("out/tiny")                     # checks target, llmc version, ABI, device
    logits = lm.prefill([72, 101, 108])       # [vocab] logits of the last prompt token
    logits = lm.decode(33)                    # one token on top of the cache
    res = lm.generate([72, 101], 32)          # llmc.runtime.lm.GenerationResult
    print(lm.bench(prompt_len=32, new_tokens=64))

The runner implements :class:`~llmc.runtime.lm.LanguageModel` (``forward(ids, positions, past)``),
so ``llmc run``, ``llmc eval`` and ``llmc bench`` work on artifacts unchanged. The KV cache stays on
the device between calls (torch tensors sharing the TVM buffers through DLPack when torch can see
the device).

**In-place cache** (artifacts whose ``backend.kv_cache.in_place`` is set; see
:mod:`llmc.backends.lower`). The runner owns one buffer ``[batch, kv_heads, capacity, head_dim]``
per ``past_*`` input and the compiled code appends the new keys into it, so a decode step neither
copies the cache nor allocates one. ``forward`` keeps its functional contract: the ``present``
it returns are views of the first ``past + seq`` keys of the buffers. Given such views back (the
usual generation loop), it appends in place; the buffers grow by doubling (one copy) when full.
With token pruning (``kv_cache.per_layer``) each layer's buffers have their own length: the call
takes them in ``kv_len`` and returns the new ones (what each layer kept), and the views follow.
Given anything else (tensors from another model, or an older ``present`` of this runner after
the sequence already went on from it) it copies them into new buffers, so a ``present`` handed
out never changes under its holder.

When the TVM package on this machine has no compiler library (a deployment install), or when
``LLMC_TVM_RUNTIME_ONLY=1``, TVM is imported in runtime-only mode (``TVM_USE_RUNTIME_LIB=1``).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llmc.errors import LlmcError
from llmc.ir.structure import NO_DECODE, LMAbiError
from llmc.runtime.lm import KV, GenerationResult, LanguageModel, SkipCounter, generate
from llmc.targets.kinds import BACKEND_ABI

_TVM_DTYPE = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int8: "int8",
    torch.uint8: "uint8",
}
_KIND_DEVICE = {"cpu": "cpu", "cuda": "cuda", "rocm": "rocm"}


class ArtifactTargetError(LlmcError):
    """The artifact cannot run here: another target, another ABI, or a missing device."""


# ----------------------------------------------------------------------------------------------
# importing the TVM runtime


def _tvm_pkg_dir() -> Path | None:
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def runtime_only_mode() -> bool:
    """True when TVM is (or will be) imported without its compiler library."""
    if "tvm" in sys.modules:
        return os.environ.get("TVM_USE_RUNTIME_LIB") == "1"
    if os.environ.get("LLMC_TVM_RUNTIME_ONLY") == "1":
        return True
    d = _tvm_pkg_dir()
    return d is not None and not (d / "lib" / "libtvm_compiler.so").exists()


def import_tvm_runtime() -> Any:
    """``tvm.runtime``, imported runtime-only when there is no compiler here (see module doc)."""
    if "tvm" not in sys.modules and runtime_only_mode():
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    if _tvm_pkg_dir() is None:
        raise LlmcError("the TVM runtime is not installed: pip install apache-tvm")
    import tvm.runtime

    return tvm.runtime


def _ensure_device_runtime(kind: str) -> None:
    """Register the CUDA/ROCm module loaders (not loaded by default in runtime-only mode)."""
    import tvm_ffi

    key = f"ffi.Module.load_from_bytes.{kind}"
    if tvm_ffi.get_global_func(key, allow_missing=True) is not None:
        return
    d = _tvm_pkg_dir()
    lib = d / "lib" / f"libtvm_runtime_{kind}.so" if d else None
    if lib is None or not lib.exists():
        raise ArtifactTargetError(
            f"this TVM installation has no {kind} runtime ({lib}); install a TVM build with "
            f"{kind.upper()} support"
        )
    if kind == "cuda":
        try:  # torch brings libcudart; TVM's CUDA runtime links against it
            import torch.cuda  # noqa: F401
        except ImportError:
            pass
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactTargetError(f"cannot load the TVM {kind} runtime {lib}: {e}") from None


# ----------------------------------------------------------------------------------------------
# checks


def check_artifact(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """The backend table of a TVM artifact, or :class:`ArtifactTargetError` saying why not."""
    if manifest.get("runtime") != "tvm" or "backend" not in manifest:
        raise ArtifactTargetError(
            f"{path}: not a TVM artifact (runtime {manifest.get('runtime')!r}, target "
            f"{manifest.get('target')!r})"
        )
    backend = manifest["backend"]
    if backend.get("abi") != BACKEND_ABI:
        raise ArtifactTargetError(
            f"{path}: compiled with backend ABI {backend.get('abi')!r}, this llmc runs "
            f"{BACKEND_ABI!r}; recompile the model"
        )
    return backend


def check_host(manifest: dict[str, Any], path: Path) -> None:
    """Refuse an artifact whose code this machine cannot execute."""
    kind = manifest.get("target_kind")
    target = manifest.get("target")
    if kind == "cpu":
        from llmc.targets.cpu_isa import host_isa_flags

        want = manifest["backend"].get("cpu", {}).get("isa", [])
        have = set(host_isa_flags())
        missing = [f for f in want if f not in have]
        if missing:
            raise ArtifactTargetError(
                f"{path}: built for a CPU with {', '.join(missing)} "
                f"({manifest['backend'].get('cpu', {}).get('mcpu', '?')}); this CPU lacks "
                f"them: recompile with `llmc compile MODEL --target cpu` on this machine"
            )
        if manifest["backend"].get("cpu", {}).get("amx"):
            # its prefill kernels use AMX tiles: the process needs the tile state from Linux
            # before the first tile instruction (else SIGILL)
            from llmc.targets.cpu_isa import request_amx

            why = request_amx()
            if why is not None:
                raise ArtifactTargetError(
                    f"{path}: its W8A8 prefill kernels use AMX tiles and {why}; recompile "
                    f"with LLMC_CPU_AMX=0 for the AVX-512 VNNI kernels"
                )
    elif kind not in _KIND_DEVICE:
        raise ArtifactTargetError(
            f"{path}: built for target {target!r} (kind {kind!r}), which the TVM runner "
            "cannot execute"
        )


# ----------------------------------------------------------------------------------------------
# the runner


class TVMRunner(LanguageModel):
    """A compiled artifact, loaded (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        *,
        device_id: int = 0,
        random_weights: bool = False,
        seed: int = 0,
    ) -> None:
        rt = import_tvm_runtime()
        from tvm.runtime.vm import VirtualMachine

        self._rt = rt  # per call, import_tvm_runtime() would look the package up again
        self.path = path
        self.manifest = manifest
        self.backend = manifest["backend"]
        self.kind = str(manifest.get("target_kind"))
        if self.kind != "cpu":
            _ensure_device_runtime(self.kind)
        self.dev = rt.device(_KIND_DEVICE[self.kind], device_id)
        if not self.dev.exist:
            raise ArtifactTargetError(
                f"{path}: built for {manifest.get('target')} ({self.kind}); no {self.kind} "
                f"device {device_id} on this machine"
            )
        self._check_arch()
        self.device = "cpu" if self.kind == "cpu" else f"{self.kind}:{device_id}"
        self.device_name = _describe(self.kind, self.dev)
        self.meta = dict(self.backend.get("model_meta", {}))
        kv = [i["type"] for i in self.backend["inputs"][2:3]]
        self.meta.setdefault("kv_dtype", kv[0].split("[")[0] if kv else "f32")
        t0 = time.perf_counter()
        from llmc.artifact import listed_file

        so = listed_file(path, manifest, "model.so", "compiled module")
        try:
            self.lib = rt.load_module(str(so))
        except Exception as e:  # TVM raises its own error types for a corrupt library
            raise ArtifactTargetError(
                f"{so}: not a loadable compiled module ({_first_line(e)}); recompile the model"
            ) from None
        self.vm = VirtualMachine(self.lib, self.dev)
        self._fns = {name: self.vm[name] for name in self.backend["functions"]}
        self.weights = self._load_weights(random_weights, seed)
        names = [w["name"] for w in self.backend["weights"]]
        self._entry_args = {
            e: [self.weights[names.index(n)] for n in ws]
            for e, ws in self.backend["entry_weights"].items()
        }
        # an entry's activation memory, allocated once and passed after its weights
        for e, fn in self.backend.get("workspaces", {}).items():
            self._entry_args[e] = self._entry_args[e] + list(self.vm[fn]())
        self.load_s = time.perf_counter() - t0
        self._torch_dev = self._torch_device()
        kv_cfg = self.backend.get("kv_cache", {})
        self._kv_bufs: list[dict[str, Any]] = list(kv_cfg.get("buffers", []))
        self._kv_in_place = bool(kv_cfg.get("in_place")) and bool(self._kv_bufs)
        #: token pruning: every layer's cache has its own length; kv_len holds one per symbol
        #: of ``lengths`` and the entries return the new ones as a last Shape output
        self._kv_per_layer = bool(kv_cfg.get("per_layer"))
        self._kv_syms: list[str] = list(kv_cfg.get("lengths") or ["past"])
        self._kv_buf_sym = [str(e.get("length") or "past") for e in self._kv_bufs]
        self._kv: _KVCache | None = None  # the in-place cache of the last sequence
        #: the graph declares the LM-ABI input decode_start (ffn-skip): passed after the cache
        self._takes_decode_start = any(
            i.get("name") == "decode_start" for i in self.backend.get("inputs", [])
        )
        #: the ffn_skipped output (ffn-skip), counted as every runner counts it
        out_names = [o.get("name") for o in self.backend.get("outputs", [])]
        self._skip_out = out_names.index("ffn_skipped") if "ffn_skipped" in out_names else None
        if self._skip_out is not None:
            self.skip_counter = SkipCounter(int(self.meta["num_layers"]))
        # stateful convenience API (prefill/decode)
        self._past: KV | None = None
        self._pos = 0

    # -- loading ----------------------------------------------------------------------------------
    def _check_arch(self) -> None:
        want = self.backend.get("arch")
        if not want or self.kind == "cpu":
            return
        have = _device_arch(self.kind, self.dev)
        if have and not _arch_ok(self.kind, want, have):
            raise ArtifactTargetError(
                f"{self.path}: built for {self.manifest.get('target')} ({want}); this device is "
                f"{have}: recompile with the matching --target"
            )

    def _load_weights(self, random_weights: bool, seed: int) -> list[Any]:
        from llmc.artifact import listed_file
        from llmc.frontends.checkpoint import SAFETENSORS_DTYPES, read_safetensors_header
        from llmc.ir.types import to_torch_dtype
        from llmc.safetensors_io import map_safetensors

        rt = import_tvm_runtime()
        handles: dict[str, Any] = {}
        out = []
        # random weights are drawn where they will live: a 7B model's 13 GB drawn on the host and
        # copied takes minutes, drawn on the GPU a second (same seed, other numbers than the CPU's)
        draw_dev = self._torch_device() if self.kind == "cuda" else None
        gen = torch.Generator(device=draw_dev or "cpu").manual_seed(seed)
        for w in self.backend["weights"]:
            f = w.get("file")
            if f is None:
                if not random_weights:
                    raise LlmcError(
                        f"{self.path}: weight {w['param']} has no data (architecture-only model);"
                        " `llmc bench OUT --random-weights` (Python: load(OUT, random_weights="
                        "True)) measures its speed with random weights"
                    )
                t = _random_weight(w, to_torch_dtype(w["dtype"]), gen, draw_dev or "cpu")
            else:
                if f not in handles:
                    fp = listed_file(self.path, self.manifest, f, "weights file")
                    header = read_safetensors_header(fp)  # validates offsets before any read
                    handles[f] = (map_safetensors(fp), header)  # views of the file
                st, header = handles[f]
                info = header.get(w.get("key"))
                if info is None:
                    raise LlmcError(f"{self.path / f}: no tensor {w.get('key')!r}")
                want = to_torch_dtype(w["dtype"])
                if (
                    list(info.shape) != list(w["shape"])
                    or SAFETENSORS_DTYPES[info.dtype][0] != want
                ):
                    raise LlmcError(
                        f"{self.path / f}: tensor {w['key']} is {info.dtype} {list(info.shape)}, "
                        f"the compiled code expects {want} {w['shape']}"
                    )
                t = st[w["key"]]
            out.append(self._to_dev(rt, t.contiguous()))
        return out

    def _torch_device(self) -> str | None:
        """The torch device sharing memory with ours, if torch can see it."""
        if self.kind == "cpu":
            return "cpu"
        if self.kind == "cuda" and torch.cuda.is_available():
            return f"cuda:{self.dev.index}"
        return None

    def _to_dev(self, rt: Any, t: torch.Tensor) -> Any:
        if self.kind == "cpu":
            return rt.from_dlpack(_aligned(t))
        if self.kind == "cuda" and torch.cuda.is_available():
            return rt.from_dlpack(t.to(f"cuda:{self.dev.index}"))
        return rt.tensor(t.numpy(), self.dev)

    def _from_dev(self, x: Any) -> torch.Tensor:
        if self._torch_dev is not None:
            return torch.from_dlpack(x)
        return torch.from_numpy(x.numpy())

    # -- LanguageModel ----------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        b, s = input_ids.shape
        return self._forward(self._entry(b, s), input_ids, positions, past)

    def forward_last(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        """The logits of the last row only: the ``prefill_last`` entry (the head on that row
        alone) where the artifact has one; an artifact compiled before it computes every row
        and the runner slices."""
        b, s = input_ids.shape
        logits, present = self._forward(self._entry(b, s, last=True), input_ids, positions, past)
        return logits[:, -1:], present

    def _forward(
        self, entry: str, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        rt = self._rt
        b, s = input_ids.shape
        self.check_indices(input_ids, positions)
        args = [self._arg(rt, input_ids), self._arg(rt, positions)]
        extra = []
        if self._takes_decode_start:
            start = NO_DECODE if self.decode_start is None else int(self.decode_start)
            extra.append(self._arg(rt, torch.tensor(start, dtype=torch.int64)))
        if self._kv_in_place:
            return self._forward_in_place(rt, entry, args, b, s, past, extra, positions)
        for k, v in past:
            args += [self._arg(rt, k), self._arg(rt, v)]
        outs = self._fns[entry](*args, *extra, *self._entry_args[entry])
        self._count_skips(outs, positions)
        logits = self._from_dev(outs[0])
        if logits.device.type != "cpu":
            logits = logits.cpu()
        present = [
            (self._keep(outs[1 + 2 * i]), self._keep(outs[2 + 2 * i])) for i in range(len(past))
        ]
        return logits, present

    def _forward_in_place(
        self,
        rt: Any,
        entry: str,
        args: list[Any],
        b: int,
        s: int,
        past: KV,
        extra: list[Any],
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, KV]:
        flat = [t for kv in past for t in kv]
        if len(flat) != len(self._kv_bufs):
            raise ValueError(
                f"past has {len(flat)} tensors, this model takes {len(self._kv_bufs)} "
                "(a key and a value per layer)"
            )
        n_past = [int(t.shape[2]) for t in flat]
        cache = self._cache_for(rt, flat, b, n_past, max(n_past, default=0) + s)
        by_sym = dict(zip(self._kv_buf_sym, n_past))
        kv_len = rt.ShapeTuple([by_sym.get(name, 0) for name in self._kv_syms])
        outs = self._fns[entry](*args, *cache.handles, *extra, kv_len, *self._entry_args[entry])
        if self._kv_per_layer:  # the new length of each symbol, as the compiled code kept rows
            new = dict(zip(self._kv_syms, (int(x) for x in outs[len(outs) - 1])))
            cache.lengths = [new[name] for name in self._kv_buf_sym]
        else:
            cache.lengths = [n + s for n in n_past]
        self._count_skips(outs, positions)
        logits = self._from_dev(outs[0])
        if logits.device.type != "cpu":
            logits = logits.cpu()
        views = cache.views(cache.lengths)
        return logits, [(views[2 * i], views[2 * i + 1]) for i in range(len(views) // 2)]

    def _count_skips(self, outs: Any, positions: torch.Tensor) -> None:
        if self.skip_counter is not None and self._skip_out is not None:
            start = NO_DECODE if self.decode_start is None else int(self.decode_start)
            self.skip_counter.count(self._from_dev(outs[self._skip_out]), positions, start)

    def _cache_for(
        self, rt: Any, past: list[Any], b: int, n_past: list[int], need: int
    ) -> _KVCache:
        """The cache to append to: the current one when ``past`` is its valid prefix (grown
        when full), else a new one holding a copy of ``past``. ``n_past``: each buffer's
        length (equal for every layer unless the model prunes tokens)."""
        c = self._kv
        grow_from = 0
        if c is not None and c.batch == b and c.lengths == n_past and c.holds(past, n_past):
            if need <= c.capacity:
                return c
            past, grow_from = c.views(n_past), c.capacity
        if not self._kv_per_layer and len(set(n_past)) > 1:
            raise LMAbiError(
                f"KV cache layers hold {sorted(set(n_past))} positions: this compiled model keeps "
                "one length for every layer (per-layer lengths, llmc-lm-v2, come from a model "
                "compiled with token-prune)"
            )
        if self._kv_per_layer:  # a layer's key and value caches share one length symbol
            for name in set(self._kv_buf_sym):
                got = {n for n, m in zip(n_past, self._kv_buf_sym) if m == name}
                if len(got) > 1:
                    raise LMAbiError(
                        f"KV cache: the caches of length {name} hold {sorted(got)} positions; "
                        "a layer's keys and values must hold as many"
                    )
        if c is not None and not grow_from and c.batch == b and need <= c.capacity and c.unheld():
            new = c  # a new sequence in the last one's buffers: no fresh pages to fault in
        else:
            new = _KVCache(self, rt, b, kv_capacity(need, grow_from))
        if any(n_past):
            new.load(past, n_past)
        self._kv = new
        return new

    def _entry(self, b: int, s: int, last: bool = False) -> str:
        """The entry for ``b`` sequences of ``s`` new tokens: one whose fixed sizes match
        (decode), else, for ``last``, the last-row prefill (``entry_logits``: absent in
        artifacts compiled before it), else ``prefill``."""
        for name, fixed in self.backend.get("entries", {}).items():
            if fixed and fixed.get("batch", b) == b and fixed.get("seq", s) == s:
                return name
        if last:
            for name, rows in self.backend.get("entry_logits", {}).items():
                if rows == "last" and not self.backend["entries"].get(name):
                    return name
        return "prefill"

    def _arg(self, rt: Any, t: Any) -> Any:
        if isinstance(t, _DeviceTensor):
            return t.handle
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            # torch gives empty tensors non-compact strides; TVM checks them
            return rt.empty(tuple(t.shape), _TVM_DTYPE[t.dtype], self.dev)
        if isinstance(t, torch.Tensor):
            if self.kind == "cpu" or (self._torch_dev is not None and t.device.type == "cuda"):
                return rt.from_dlpack(_aligned(t))
            return self._to_dev(rt, t.cpu())
        return t

    def _keep(self, x: Any) -> Any:
        if self._torch_dev is not None:
            return torch.from_dlpack(x)
        return _DeviceTensor(x)

    def call_entry(self, entry: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``entry`` once on the graph's inputs (a non-LM module); its outputs on the CPU."""
        rt = self._rt
        outs = self._fns[entry](*[self._arg(rt, t) for t in inputs], *self._entry_args[entry])
        if not isinstance(outs, (list, tuple)) and not type(outs).__name__.endswith("Array"):
            outs = [outs]
        return [self._from_dev(o).cpu().clone() for o in outs]

    # -- convenience API --------------------------------------------------------------------------
    def reset(self) -> None:
        self._past, self._pos = None, 0

    def prefill(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Start a sequence: run the prompt, keep its cache; returns the last token's logits."""
        ids_t = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
        pos = torch.arange(ids_t.shape[1], dtype=torch.int64)[None]
        logits, self._past = self.forward_last(ids_t, pos, self.empty_past(1))
        self._pos = ids_t.shape[1]
        return logits[0, -1]

    def decode(self, token: int) -> torch.Tensor:
        """One token on top of the cache; returns its logits."""
        if self._past is None:
            raise LlmcError("decode() before prefill(): start the sequence with prefill(prompt)")
        ids = torch.tensor([[int(token)]], dtype=torch.int64)
        pos = torch.tensor([[self._pos]], dtype=torch.int64)
        logits, self._past = self.forward(ids, pos, self._past)
        self._pos += 1
        return logits[0, -1]

    def generate(self, prompt: list[int], max_new_tokens: int, **kw: Any) -> GenerationResult:
        return generate(self, prompt, max_new_tokens, **kw)

    def bench(
        self, prompt_len: int = 128, new_tokens: int = 128, repeat: int = 3
    ) -> dict[str, Any]:
        """Prefill and decode throughput (best of ``repeat``), as ``llmc bench --json`` reports."""
        vocab = min(self.vocab_size, 256)
        prompt = [(i * 7 + 3) % vocab for i in range(prompt_len)]
        generate(self, prompt[: min(8, prompt_len)], 2)  # warm-up: kernel loading, allocator
        best: GenerationResult | None = None
        for _ in range(repeat):
            r = generate(self, prompt, new_tokens)
            if best is None or r.decode_s < best.decode_s:
                best = r
        assert best is not None
        steps = max(len(best.step_s), 1)
        return {
            "target": self.manifest.get("target"),
            "device": self.device_name,
            "prompt_tokens": best.prompt_tokens,
            "new_tokens": best.new_tokens,
            "prefill_tokens_per_s": best.prefill_tokens_per_s,
            "decode_tokens_per_s": best.decode_tokens_per_s,
            "decode_ms_per_token": 1000.0 * best.decode_s / steps,
            "repeat": repeat,
        }


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """TVM takes tensors whose data is 64-byte aligned (torch's allocator aligns new tensors;
    views and memory-mapped files may not be)."""
    t = t.contiguous()
    if t.numel() and t.data_ptr() % 64:
        t = t.clone()
    return t


#: Capacities are multiples of this many keys.
KV_BLOCK = 256


def kv_capacity(need: int, current: int = 0) -> int:
    """The capacity of a new cache buffer for ``need`` keys: at least double ``current`` (a
    buffer that filled up), rounded up to :data:`KV_BLOCK` keys."""
    want = max(need, 2 * current)
    return -(-want // KV_BLOCK) * KV_BLOCK


class _KVCache:
    """One sequence's in-place cache buffers (see the module docstring)."""

    def __init__(self, runner: TVMRunner, rt: Any, batch: int, capacity: int) -> None:
        from llmc.ir.types import to_torch_dtype

        self.batch, self.capacity = batch, capacity
        self.lengths: list[int] = [0] * len(runner._kv_bufs)  # valid keys per buffer
        self._torch: list[torch.Tensor] | None = None
        self.handles: list[Any] = []
        self._handed: list[Any] = []  # the views views() returned last (the decode fast path)
        self._handed_ns: list[int] = []  # their lengths
        self._groups: list[tuple[torch.Tensor, list[int]]] = []  # (tensor, buffers in it)
        shapes = [
            (batch, int(e["kv_heads"]), capacity, int(e["head_dim"])) for e in runner._kv_bufs
        ]
        dtypes = [to_torch_dtype(e["dtype"]) for e in runner._kv_bufs]
        if runner._torch_dev is not None:
            # buffers of one shape and dtype are slices of one tensor, so that views() cuts
            # them all in one call (narrow + unbind: ~0.5 us a buffer, not ~1.7 us a slice)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, key in enumerate(zip(shapes, dtypes)):
                groups.setdefault(key, []).append(i)
            self._torch = [torch.empty(0)] * len(shapes)
            for (sh, dt), idx in groups.items():
                big = torch.empty((len(idx), *sh), dtype=dt, device=runner._torch_dev)
                self._groups.append((big, idx))
                for i, t in zip(idx, big.unbind(0)):
                    self._torch[i] = t
            self.handles = [rt.from_dlpack(t) for t in self._torch]
            self._base = [_storage_refs(big) for big, _ in self._groups]
        else:
            self.handles = [
                rt.empty(sh, _TVM_DTYPE[dt], runner.dev) for sh, dt in zip(shapes, dtypes)
            ]

    def views(self, ns: list[int]) -> list[Any]:
        """The first ``ns[i]`` keys of buffer ``i`` (no copy)."""
        if self._torch is not None:
            out: list[Any] = [None] * len(ns)
            for big, idx in self._groups:
                n = ns[idx[0]]
                if all(ns[i] == n for i in idx):
                    for i, v in zip(idx, big.narrow(3, 0, n).unbind(0)):
                        out[i] = v
                else:  # per-layer lengths (token pruning)
                    for i in idx:
                        out[i] = self._torch[i].narrow(2, 0, ns[i])
            self._handed = out
        else:
            self._handed = [_KVView(self, i, n) for i, n in enumerate(ns)]
        self._handed_ns = list(ns)
        return self._handed

    def unheld(self) -> bool:
        """Whether no view of these buffers is alive outside this cache, so that a new
        sequence may take them (``present`` views handed out never change under a holder):
        each view :meth:`views` last returned is referenced by this cache alone, and no other
        tensor shares the buffers' storage (a slice of a view, a tensor made from one).
        Measured by reference counts; False where torch does not expose the storage's."""
        if self._torch is None or not hasattr(torch._C, "_storage_Use_Count"):
            return False
        handed = self._handed
        # what a view referenced by a list alone counts here (the loop's name and the call's
        # argument may or may not count, by Python version: measured, not assumed)
        alone = 0
        for v in [object()]:
            alone = sys.getrefcount(v)
        for v in handed:
            if sys.getrefcount(v) > alone:
                return False
        alive = [0] * len(self._groups)
        for gi, (_, idx) in enumerate(self._groups):
            alive[gi] = sum(1 for i in idx if i < len(handed) and handed[i] is not None)
        return all(
            _storage_refs(big) == base + n
            for (big, _), base, n in zip(self._groups, self._base, alive)
        )

    def holds(self, past: list[Any], ns: list[int]) -> bool:
        """``past`` is exactly this cache's first ``ns[i]`` keys per buffer (views this cache
        handed out)."""
        handed = self._handed
        if handed and len(past) == len(handed) and all(p is q for p, q in zip(past, handed)):
            return self._handed_ns == ns  # the generation loop: its last views
        if self._torch is not None:
            return all(
                isinstance(p, torch.Tensor)
                and p.device == t.device
                and p.data_ptr() == t.data_ptr()
                and tuple(p.shape) == (t.shape[0], t.shape[1], n, t.shape[3])
                and p.stride() == t.stride()
                for p, t, n in zip(past, self._torch, ns)
            )
        return all(
            isinstance(p, _KVView) and p.cache is self and p.n == n for p, n in zip(past, ns)
        )

    def load(self, past: list[Any], ns: list[int]) -> None:
        """Copy the first ``ns[i]`` keys of ``past[i]`` (tensors, or another cache's views) in."""
        if self._torch is not None:
            for t, p, n in zip(self._torch, past, ns):
                src = p.full()[:, :, :n] if isinstance(p, _KVView) else p
                t[:, :, :n].copy_(torch.as_tensor(src))
            return
        for h, p, n in zip(self.handles, past, ns):  # a device torch cannot see: via the host
            arr = h.numpy()
            src = p.full()[:, :, :n] if isinstance(p, _KVView) else torch.as_tensor(p).numpy()
            arr[:, :, :n] = src
            h.copyfrom(arr)


def _storage_refs(t: torch.Tensor) -> int:
    """The number of tensors (views included) holding ``t``'s storage."""
    st = t.untyped_storage()
    return int(torch._C._storage_Use_Count(st._cdata)) - 1  # not ``st`` itself


class _KVView:
    """The first ``n`` keys of an in-place cache buffer on a device torch cannot see."""

    def __init__(self, cache: _KVCache, i: int, n: int) -> None:
        self.cache, self.i, self.n = cache, i, n

    @property
    def shape(self) -> tuple[int, ...]:
        b, h, _, d = (int(x) for x in self.cache.handles[self.i].shape)
        return (b, h, self.n, d)

    def full(self) -> Any:
        """The whole buffer, on the host (numpy)."""
        return self.cache.handles[self.i].numpy()

    def numpy(self) -> Any:
        return self.full()[:, :, : self.n]


class _DeviceTensor:
    """A TVM tensor on a device torch cannot see (kept opaque between calls)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.handle.shape)


def _random_weight(
    w: dict[str, Any], dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"
) -> torch.Tensor:
    shape = tuple(w["shape"])
    layout = str(w["layout"])
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen, device=device)
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, dtype=torch.int8, generator=gen, device=device)
    if layout.endswith("zero"):
        return torch.full(shape, 8.0, dtype=dtype, device=device)
    if layout.endswith("scale"):
        return torch.full(shape, 0.002, dtype=dtype, device=device)
    return (torch.randn(shape, generator=gen, device=device) * 0.02).to(dtype)


def _describe(kind: str, dev: Any) -> str:
    if kind == "cpu":
        model = ""
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        threads = os.environ.get("TVM_NUM_THREADS", str(os.cpu_count()))
        return f"cpu: {model or 'unknown'} ({threads} threads)"
    try:
        name = dev.device_name
    except Exception:  # noqa: BLE001
        name = ""
    return f"{kind}:{dev.index} {name}".strip()


def _device_arch(kind: str, dev: Any) -> str | None:
    try:
        if kind == "cuda":
            return "sm_" + str(dev.compute_version).replace(".", "")
        if kind == "rocm":
            return str(dev.compute_version)
    except Exception:  # noqa: BLE001
        return None
    return None


def _arch_ok(kind: str, want: str, have: str) -> bool:
    if kind == "cuda":
        # SASS for `want` runs on the same major architecture; the embedded PTX JIT-compiles for
        # newer ones. Older GPUs cannot run it.
        def num(a: str) -> int:
            return int("".join(c for c in a if c.isdigit()) or 0)

        return num(have) >= num(want)
    return want.split(":")[0] in have


def load(
    artifact_dir: str | Path, *, device_id: int = 0, random_weights: bool = False, seed: int = 0
) -> TVMRunner:
    """Load a compiled artifact (checks format, llmc version, file hashes, target and device)."""
    from llmc.artifact import check_target_label, read_manifest

    path = Path(artifact_dir)
    manifest = read_manifest(path)
    check_target_label(path, manifest)
    check_artifact(manifest, path)
    check_code(manifest, path)
    check_host(manifest, path)
    try:
        return TVMRunner(
            path, manifest, device_id=device_id, random_weights=random_weights, seed=seed
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # only an edited manifest gets here: compile writes every field the runner reads
        raise ArtifactTargetError(
            f"{path / 'manifest.json'}: malformed backend table ({type(e).__name__}: "
            f"{_first_line(e)}); recompile the model"
        ) from None


def check_code(manifest: dict[str, Any], path: Path) -> None:
    """The device code inside ``model.so`` must be the target's: CUDA cubins of the target's
    ``sm_XX`` for cuda, AMDGPU code objects of its ``gfxNNN`` for rocm, neither for cpu. Catches
    an artifact whose manifest was relabelled for another target."""
    from llmc.artifact import listed_file
    from llmc.backends.elfcheck import find_code_objects, find_cubins

    kind = manifest.get("target_kind")
    so = listed_file(path, manifest, "model.so", "compiled module")
    blob = so.read_bytes()
    try:
        cubins = [c.arch for c in find_cubins(blob)]
        amd = [c.arch for c in find_code_objects(blob)]
    except LlmcError:
        raise ArtifactTargetError(f"{so}: holds a malformed device code object") from None
    want = manifest["backend"].get("arch")
    found = {"cuda": cubins, "rocm": amd}
    for k, archs in found.items():
        if k != kind and archs:
            raise ArtifactTargetError(
                f"{so}: holds {k} code ({', '.join(sorted(set(archs)))}) but the manifest says "
                f"target {manifest.get('target')!r} ({kind}); recompile the model"
            )
    if kind in found:
        archs = found[kind]
        if not archs:
            raise ArtifactTargetError(
                f"{so}: holds no {kind} device code but the manifest says target "
                f"{manifest.get('target')!r}; recompile the model"
            )
        bad = sorted({a for a in archs if a != want})
        if bad:
            raise ArtifactTargetError(
                f"{so}: holds code for {', '.join(bad)}, the manifest says {want!r}"
            )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_backend(artifact_dir: str | Path) -> dict[str, Any]:
    """The backend table of an artifact's manifest (no TVM needed)."""
    m = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    return dict(m.get("backend", {}))


__all__ = ["ArtifactTargetError", "TVMRunner", "check_artifact", "load", "read_backend"]
