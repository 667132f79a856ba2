"""What the CUDA and ROCm pipelines share: entries, dlight schedules, GPU lowering rules.

A GPU pipeline compiles three entries: ``prefill`` (every size symbolic), ``prefill_last`` (the
same, with the logits of the last row only: generation's prefill, :mod:`llmc.ir.lastrow`) and
``decode`` (``batch = seq = 1``), so that dlight sees decode's linear layers as matrix-vector products and
picks its GEMV schedule (with the dequantization of 4-bit weights inside the reduction). Weights
keep their ``[out, in]`` storage order, which is already the layout a GEMV wants: each output row
is one contiguous, coalesced read.
"""

from __future__ import annotations

from typing import Any

import tvm

from llmc.backends.lower import PREFILL_LAST, Entry
from llmc.backends.pipeline import TVMPipeline

GPU_ENTRIES = (Entry("prefill"), PREFILL_LAST, Entry("decode", (("batch", 1), ("seq", 1))))


def dlight_rules() -> list[Any]:
    """The schedule rules, first match wins, ending in the fallback (injective) rule."""
    from tvm.s_tir import dlight as dl

    return [
        _simt_matmul(),
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


def _simt_matmul() -> Any:
    """dlight's ``Matmul`` rule with its tensor-core branch switched off.

    On CUDA sm_70 and newer, ``dl.gpu.Matmul`` hands float16 and int8 matmuls with every extent
    above 64 to ``MatmulTensorization`` / ``MatmulInt8Tensorization``. In the apache-tvm 0.27
    wheel that path is unusable twice over: the float16 rule crashes the process inside
    ``s_tir.Tensorize`` for every shape we tried (a 256 x 256 ``linear`` included), and before it
    even looks at the function (``dlight.do_not_tensorize`` is checked after the import) it imports
    ``tvm.s_tir.tensor_intrin``, whose ~500 TVMScript intrinsics take 40 s to parse. The rule
    below asks ``Matmul`` with the target's ``arch`` set to ``sm_60``, below the tensor-core
    threshold, so it takes its SIMT schedule directly; the schedule does not depend on ``arch``
    (its tile configuration is chosen by target kind), and code generation still gets the real
    target. Decode's matrix-vector products go to the GEMV rules and are unaffected; prefill GEMMs
    run without tensor cores until the crash is fixed upstream.
    """
    from tvm.s_tir import dlight as dl

    class SimtMatmul(dl.gpu.Matmul):
        def apply(self, func: Any, target: tvm.target.Target, tunable: bool) -> Any:
            if target.kind.name == "cuda":
                attrs = {k: v for k, v in target.export().items() if k != "host"}
                target = tvm.target.Target({**attrs, "arch": "sm_60"}, host=target.host)
            return super().apply(func, target, tunable)

    return SimtMatmul()
