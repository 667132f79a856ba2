"""What the CUDA and ROCm pipelines share: entries, dlight schedules, GPU lowering rules.

A GPU pipeline compiles two entries: ``prefill`` (every size symbolic) and ``decode``
(``batch = seq = 1``), so that dlight sees decode's linear layers as matrix-vector products and
picks its GEMV schedule (with the dequantization of 4-bit weights inside the reduction). Weights
keep their ``[out, in]`` storage order, which is already the layout a GEMV wants: each output row
is one contiguous, coalesced read.
"""

from __future__ import annotations

from typing import Any

import tvm

from llmc.backends.lower import Entry
from llmc.backends.pipeline import TVMPipeline

GPU_ENTRIES = (Entry("prefill"), Entry("decode", (("batch", 1), ("seq", 1))))


def dlight_rules() -> list[Any]:
    """The schedule rules, first match wins, ending in the fallback (injective) rule."""
    from tvm.s_tir import dlight as dl

    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.LowBatchGEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


class GPUPipeline(TVMPipeline):
    entries = GPU_ENTRIES

    def schedule_passes(self, tvm_target: tvm.target.Target) -> list[tvm.transform.Pass]:
        from tvm.s_tir import dlight as dl

        return [dl.ApplyDefaultSchedule(*dlight_rules())]
