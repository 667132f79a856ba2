"""Running an FPGA artifact on this machine: the functional simulator behind the LM interface.

``llmc run OUT`` and ``llmc eval OUT`` on a ``u280``/``vhk158`` artifact execute the artifact's
instruction streams bit-accurately (:class:`~llmc.fpga.funcsim.FuncRunner`), so the text they
print and the perplexity they measure are what the accelerator's arithmetic gives. The device
holds one sequence: batch 1, a prompt from an empty cache (prefill chunks), then one token per
call (the decode stream of its bucket). The KV cache lives in the simulated HBM; the caches
returned to the caller are copies read back from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmc.errors import LlmcError
from llmc.runtime.lm import KV, LanguageModel


def shipped_streams(path: Path, manifest: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(stage, bucket) -> sha256 of each instruction stream file the artifact lists."""
    from llmc.artifact import ArtifactError, listed_file, sha256_file

    index_path = listed_file(path, manifest, "fpga/instructions/index.json", "stream index")
    try:
        entries = json.loads(index_path.read_text())["entries"]
        out = {}
        for e in entries:
            f = listed_file(path, manifest, f"fpga/instructions/{e['file']}", "stream")
            out[(str(e["stage"]), int(e["bucket"]))] = sha256_file(f)
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{index_path}: malformed stream index ({e})") from None
    return out


class FpgaLM(LanguageModel):
    """An FPGA artifact on the functional simulator."""

    device = "flightllm-funcsim"
    #: the device holds one sequence: continuations (token pruning's eval) run row by row
    max_batch = 1

    def __init__(self, path: str | Path) -> None:
        from llmc.artifact import listed_file, load_artifact, sha256_file
        from llmc.fpga.arch import load_arch
        from llmc.fpga.funcsim import FuncRunner
        from llmc.fpga.program import build_program

        art = load_artifact(path)
        if any(p.is_meta for p in art.graph.params.values()):
            raise LlmcError(
                f"{path}: an architecture-only model has no weights to run; use `llmc simulate`"
            )
        arch = load_arch(str(listed_file(path, art.manifest, "fpga/arch.yaml", "architecture")))
        self.graph = art.graph
        self.meta = dict(art.graph.meta)
        self.prog = build_program(art.graph, arch)
        # The simulator runs streams lowered from the graph; each must be the artifact's own
        # (checked as it is first used) and so must the HBM image: what runs is what shipped.
        self.prog.shipped = shipped_streams(Path(path), art.manifest)
        image = listed_file(path, art.manifest, "fpga/hbm.bin", "HBM image")
        if hashlib.sha256(self.prog.hbm_image().tobytes()).hexdigest() != sha256_file(image):
            raise LlmcError(
                f"{image}: differs from the HBM image this llmc lays out from the artifact's "
                "graph and weights (edited, or built by another llmc); recompile the model"
            )
        self.runner = FuncRunner(self.prog)
        self._caches = list(self.prog.cache_inputs)
        self._skips = "decode_start" in self.prog.int_inputs

    def skip_stats(self) -> dict[str, Any] | None:
        """FFN-skip counters from the branches the device took (None: the model skips nothing)."""
        return self.runner.skip_stats() if self._skips else None

    def device_timing(self) -> dict[str, Any]:
        """The cycle model's time for the streams run since the last reset, each charged with
        the branches it took (:func:`llmc.fpga.sim.replay`): ``fpga_decode_ms_per_token``..."""
        from llmc.fpga.sim import replay

        return replay(self.prog, self.runner.trace) if self.runner.trace else {}

    def reset_skip_stats(self) -> None:
        r = self.runner
        r.skipped = [0] * len(r.skipped)
        r.decode_rows = 0
        r.trace.clear()

    @property
    def max_positions(self) -> int:
        return min(int(self.meta.get("max_position_embeddings", 2048)), self.prog.arch.max_tokens)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence forward from an empty cache, one sequence at a time (batch rows run
        one after the other, as they would on the device)."""
        rows = [super(FpgaLM, self).logits(input_ids[i : i + 1]) for i in range(len(input_ids))]
        return torch.cat(rows)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        if input_ids.shape[0] != 1:
            raise LlmcError(f"the accelerator runs batch 1, got batch {input_ids.shape[0]}")
        self.check_indices(input_ids, positions)
        past_len = int(past[0][0].shape[2]) if past else 0
        ids = input_ids[0].numpy()
        pos = positions[0].numpy()
        self.runner.decode_start = self.decode_start  # ffn-skip: rows from here may skip
        if past_len == 0:
            logits = self.runner.prefill(ids, pos)
        elif past_len != self.runner.pos:
            raise LlmcError(
                f"the device cache holds {self.runner.pos} tokens, the caller's {past_len}: "
                "an FPGA artifact continues only its own sequence"
            )
        else:
            logits = np.stack(
                [self.runner.decode(int(t), int(p)) for t, p in zip(ids, pos, strict=True)]
            )
        out = torch.from_numpy(np.ascontiguousarray(logits))[None]
        grown: KV = []
        names = self._caches
        for i in range(0, len(names), 2):
            k = torch.from_numpy(self.runner.cache(names[i]))[None]
            v = torch.from_numpy(self.runner.cache(names[i + 1]))[None]
            grown.append((k, v))
        return out, grown


def load(path: str | Path) -> LanguageModel:
    """The ``fpga`` kind's ``load`` hook (:mod:`llmc.targets.kinds`)."""
    return FpgaLM(path)
