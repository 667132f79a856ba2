"""llama.cpp (``llama-cpp-python``) on files written by ``llmc export --format gguf``: max |logits|
and top-1 agreement against llmc's interpreter on llmc's import of the same file, and whether
llama.cpp's tokenizer gives llmc's ids (the numbers in docs/passes.md, "GGUF (llama.cpp)").

    pip install --target /tmp/llcpp/site llama-cpp-python diskcache   # builds llama.cpp
    PYTHONPATH=.:/tmp/llcpp/site python tools/measure_export_gguf_llamacpp.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np
import torch

from llmc.export_gguf import export_gguf
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run


def compare(path: Path, ids: list[int]) -> str:
    back = load_model(str(path))
    want = run(back.graph, lm_inputs(back.graph, torch.tensor([ids])))[0][0]
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False)
    llm.eval(ids)
    got = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return f"{float((got - want).abs().max()):.3g} ({float(want.abs().max()):.1f}) | {agree:.3f}"


def main() -> None:
    tiny = load_model("tiny")
    ids = list(b"The quick brown fox jumps over the lazy dog.")
    text = "naïve café 🙂"
    print("| file | max abs logit diff (max abs logit) | top-1 agree | llama.cpp tokenizer |")
    print("|---|---|---|---|")
    cases = [
        ("f32", ""),
        ("f16", ""),
        ("q8_0", "rtn:bits=8:group=32:sym=true"),
        ("q4_0", "rtn:bits=4:group=32"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for gtype, spec in cases:
            g = tiny.graph.copy()
            if spec:
                build_pipeline(spec).run(g, PassContext())
            out = Path(tmp) / f"{gtype}.gguf"
            export_gguf(g, out, gguf_type=gtype, tokenizer=tiny.tokenizer, config=tiny.config)
            llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
            same = llm.tokenize(text.encode(), add_bos=False, special=False) == list(text.encode())
            name = f"tiny {gtype}" + (f" after `{spec}`" if spec else "")
            print(f"| {name} | {compare(out, ids)} | {'= llmc' if same else 'DIFFERENT'} |")
        # Qwen2 (q/k/v biases) written as llama + attn_*.bias, no tokenizer (no_vocab)
        from tests.frontend.hf_models import make

        make("qwen2").save_pretrained(Path(tmp) / "qwen2")
        q = load_model(str(Path(tmp) / "qwen2"))
        out = Path(tmp) / "qwen2.gguf"
        export_gguf(q.graph, out, gguf_type="f32", config=q.config)
        print(f"| random Qwen2 (hf_models) f32 | {compare(out, list(range(3, 40)))} | none |")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fetch_real_model

        src = fetch_real_model.model_path()
        if src is None:
            return
        smol = load_model(str(src))
        prompt = "The capital of France is Paris, and the capital of Italy is"
        sids = smol.tokenizer.encode(prompt)
        out = Path(tmp) / "smol.gguf"
        export_gguf(smol.graph, out, gguf_type="q8_0", tokenizer=smol.tokenizer, config=smol.config)
        llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
        same = llm.tokenize(prompt.encode(), add_bos=False) == sids
        print(f"| SmolLM2-135M q8_0 | {compare(out, sids)} | {'= llmc' if same else 'DIFFERENT'} |")


if __name__ == "__main__":
    main()
