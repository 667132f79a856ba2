"""Max |transformers - interpreter| logits of ``llmc export --format hf`` per family, dense and
after ``magnitude:sparsity=0.5,rtn:bits=4:group=32`` (the numbers in docs/passes.md, "Export").

    PYTHONPATH=. python tools/measure_export_hf.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from llmc.export_hf import export_hf
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run
from tests.frontend.hf_models import FAMILIES, VOCAB, make
from tests.frontend.test_export_families import COMPRESSED, _hf_logits


def main() -> None:
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        for fam in sorted(FAMILIES):
            d = Path(tmp) / fam
            make(fam).save_pretrained(d / "src")
            lm = load_model(str(d / "src"))
            row = [fam]
            for spec in ("", COMPRESSED):
                g = lm.graph.copy()
                if spec:
                    build_pipeline(spec).run(g, PassContext(calib_samples=2, calib_seqlen=16))
                out = d / (spec.split(":")[0] or "dense")
                export_hf(g, out, config=lm.config)
                want = run(g, lm_inputs(g, ids))[0]
                row.append(f"{float((_hf_logits(out, ids) - want).abs().max()):.1e}")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
