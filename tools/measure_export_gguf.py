"""``llmc export --format gguf`` on ``tiny``: per GGUF type and quantization, the file size, how
many weights keep llmc's codes, and max |logits| of llmc's re-import of the file against the
interpreter on the exported graph (the numbers in docs/passes.md, "Export").

    PYTHONPATH=. python tools/measure_export_gguf.py
    PYTHONPATH=. python tools/measure_export_gguf.py --real   # SmolLM2-135M Q4_1 (fetched once)

``--real``: the GGUF of ``tools/fetch_real_model.py`` loaded by llmc, exported as f16/q8_0/q4_0
and loaded back: file size, max |logits| against the loaded model, top-1 agreement on a prompt,
and whether the re-imported tokenizer encodes as the original.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gguf
import torch

from llmc.export_gguf import export_gguf
from llmc.frontends import load_model
from llmc.ir.params import DENSE
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run

CASES = [
    ("f32", ""),
    ("f16", ""),
    ("q8_0", ""),
    ("q8_0", "rtn:bits=8:group=32:sym=true"),
    ("q4_0", ""),
    ("q4_0", "rtn:bits=4:group=32"),
    ("q4_0", "rtn:bits=4:group=128:sym=false"),
]


def expected_dense(v: torch.Tensor, gtype: str) -> torch.Tensor:
    """A float weight as the file holds it (1-D: F32; 2-D: f16 rounding or gguf.quants' round
    trip); weights that keep llmc's codes hold ``code * float16(scale)`` instead."""
    if v.dim() != 2 or gtype == "f32":
        return v
    if gtype == "f16":
        return v.half().float()
    qt = gguf.GGMLQuantizationType[gtype.upper()]
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(v.numpy(), qt), qt))


def main() -> None:
    lm = load_model("tiny")
    ids = torch.tensor([list(b"The quick brown fox jumps over the lazy dog.")])
    print(
        "| --gguf-type | --passes | bytes | exact / requantized / quantized "
        "| max abs logit diff vs the exported graph | vs its expected weights |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for gtype, spec in CASES:
            g = lm.graph.copy()
            if spec:
                build_pipeline(spec).run(g, PassContext())
            out = Path(tmp) / f"{gtype}-{len(spec)}.gguf"
            info = export_gguf(g, out, gguf_type=gtype, tokenizer=lm.tokenizer, config=lm.config)
            back = load_model(str(out))
            a = run(g, lm_inputs(g, ids))[0]
            b = run(back.graph, lm_inputs(back.graph, ids))[0]
            ref = g.copy()  # the weights the file should hold: see expected_dense()
            for p in ref.params.values():
                if p.name in info["exact"]:
                    p.data = {**p.data, "scale": p.data["scale"].half().float()}
                else:
                    p.data = {"value": expected_dense(p.value().float(), gtype)}
                    p.format = DENSE
                p.invalidate()
            c = run(ref, lm_inputs(ref, ids))[0]
            counts = f"{len(info['exact'])} / {len(info['requantized'])} / {len(info['quantized'])}"
            print(
                f"| {gtype} | {spec or '(none)'} | {out.stat().st_size} | {counts} | "
                f"{float((a - b).abs().max()):.2e} | {float((c - b).abs().max()):.2e} |",
                flush=True,
            )


def real() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fetch_real_model

    src = fetch_real_model.model_path()
    if src is None:
        raise SystemExit("run python tools/fetch_real_model.py first")
    lm = load_model(str(src))
    texts = ["The capital of France is Paris, and the capital of Italy is", "naïve café 🙂 123"]
    ids = torch.tensor([lm.tokenizer.encode(texts[0])])
    a = run(lm.graph, lm_inputs(lm.graph, ids))[0]
    print(f"source {src.name}: {src.stat().st_size} bytes, {ids.shape[1]} prompt tokens")
    print("| --gguf-type | bytes | tensors | max abs logit diff | top-1 agree | tokenizer |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for gtype in ("f16", "q8_0", "q4_0"):
            out = Path(tmp) / f"{gtype}.gguf"
            info = export_gguf(
                lm.graph, out, gguf_type=gtype, tokenizer=lm.tokenizer, config=lm.config
            )
            back = load_model(str(out))
            b = run(back.graph, lm_inputs(back.graph, ids))[0]
            agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
            same = all(back.tokenizer.encode(t) == lm.tokenizer.encode(t) for t in texts)
            print(
                f"| {gtype} | {out.stat().st_size} | {info['tensors']} | "
                f"{float((a - b).abs().max()):.3f} | {agree:.3f} | "
                f"{'same ids' if same else 'DIFFERENT'} ({info['tokenizer']}) |",
                flush=True,
            )


if __name__ == "__main__":
    import sys

    real() if "--real" in sys.argv else main()
