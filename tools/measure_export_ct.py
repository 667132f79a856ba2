"""``llmc export --format compressed-tensors`` on ``tiny`` (and the random Qwen2 of the tests):
format, file size against ``--format hf``, the largest difference between compressed-tensors'
decompression and llmc's dequantized weights, and transformers' logits against the interpreter's
(the numbers in docs/passes.md, "compressed-tensors").

    PYTHONPATH=. python tools/measure_export_ct.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from llmc.export_ct import export_compressed_tensors
from llmc.export_hf import export_hf
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run
from tests.passes.test_export_ct import _hf_logits, decompress

SPECS = [
    "rtn:bits=4:group=128",
    "gptq:bits=4:group=128",
    "gptq:bits=4:group=0",
    "rtn:bits=8:group=0",
    "rtn:bits=4:group=32:sym=false",
    "smoothquant,w8a8",
    "smoothquant,w8a8:act=tensor",
    "wanda:pattern=2:4,rtn:bits=4:group=32",
    "magnitude:pattern=2:4",
]


def measure(name: str, lm, spec: str, ids: torch.Tensor, tmp: Path) -> str:
    g = lm.graph.copy()
    build_pipeline(spec).run(g, PassContext(calib_samples=8, calib_seqlen=64))
    ct, hf = tmp / f"{name}-{len(list(tmp.iterdir()))}", tmp / f"hf-{len(list(tmp.iterdir()))}"
    info = export_compressed_tensors(g, ct, config=lm.config)
    export_hf(g, hf, config=lm.config)
    weights, _, _ = decompress(ct)
    wdiff = max(
        float((weights[n].float() - p.value().float()).abs().max())
        for n, p in g.params.items()
        if n in weights
    )
    want = run(g, lm_inputs(g, ids))[0]
    try:
        got = _hf_logits(ct, ids)
        ldiff = f"{float((got - want).abs().max()):.1e}"
        top1 = f"{float((got.argmax(-1) == want.argmax(-1)).float().mean()):.3f}"
    except RuntimeError:  # asymmetric pack-quantized: transformers cannot load it
        ldiff, top1 = "does not load", "-"
    size = (ct / "model.safetensors").stat().st_size
    dense = (hf / "model.safetensors").stat().st_size
    return (
        f"| {name} | {spec} | {info['format']} | {size} ({size / dense:.2f}x) | "
        f"{wdiff:.1e} | {ldiff} | {top1} |"
    )


def main() -> None:
    from tests.frontend.hf_models import VOCAB, make

    tiny = load_model("tiny")
    ids = tiny.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    ids = torch.tensor([ids])
    print("| model | --passes | format | model.safetensors bytes (vs --format hf) |", end="")
    print(" max abs weight diff | max abs logit diff (transformers) | top-1 agree |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for spec in SPECS:
            print(measure("tiny", tiny, spec, ids, tmp), flush=True)
        make("qwen2").save_pretrained(tmp / "qwen2-src")
        qwen = load_model(str(tmp / "qwen2-src"))
        qids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
        for spec in ("rtn:bits=4:group=32", "w8a8:measure=false"):
            print(measure("qwen2 (random)", qwen, spec, qids, tmp), flush=True)


if __name__ == "__main__":
    main()
