"""The ROCm pipeline: dlight-scheduled kernels, AMDGPU code objects linked at build time.

Tables over the shared GPU pipeline (:mod:`llmc.backends.gpu`):

- TVM target: the registry's dict (``{"kind": "rocm", "mcpu": "gfx942"}``);
- toolchain: the ROCm device libraries and a code-object-v6 ``ld.lld``
  (:func:`llmc.backends.toolchain.rocm_toolchain`); TVM's LLVM emits the code object in-process,
  so the module already holds the linked ``hsaco`` and the export needs no rewriting.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from llmc.backends.export import export_with_device_code
from llmc.backends.gpu import GPUPipeline


class ROCmPipeline(GPUPipeline):
    kind = "rocm"

    def toolchain(self) -> AbstractContextManager[Any]:
        from llmc.backends.toolchain import rocm_toolchain

        return rocm_toolchain()

    def export_library(self, ex: relax.VMExecutable, path: Path) -> dict[str, Any]:
        # Packing through our exporter keeps one code path and records the module sizes.
        stats = export_with_device_code(ex, path, lambda kind, payload: payload)
        return {"arch": self._arch, **stats}

    def run(self, graph: Any, target: Any, out: Path, report: dict[str, Any]) -> dict[str, Any]:
        self._arch = str(self.tvm_target(target).attrs["mcpu"])
        return super().run(graph, target, out, report)

    def target_fields(self, tvm_target: tvm.target.Target) -> dict[str, Any]:
        return {}


PIPELINE = ROCmPipeline()
