"""Small random Hugging Face models, one per supported family, for differential tests.

Each config exercises what makes its family different: GQA (Llama, Mistral, Qwen2), llama3
rope scaling (Llama), a sliding
window smaller than the test sequences (Mistral), qkv bias (Qwen2), learned positions with the +2
offset (OPT), Conv1D with [in, out] weights and tied embeddings (GPT-2), partial rotary and a
parallel residual (GPT-NeoX).
"""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64)
RMS = dict(
    COMMON,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

FAMILIES: dict[str, tuple[type, type, dict]] = {
    # Llama 3.1-style frequency-dependent rope scaling, with a small original context so it bites.
    "llama": (
        T.LlamaConfig,
        T.LlamaForCausalLM,
        dict(
            RMS,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 5000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(RMS, sliding_window=4)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(RMS, tie_word_embeddings=True)),
    "opt": (
        T.OPTConfig,
        T.OPTForCausalLM,
        dict(COMMON, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4),
    ),
    "gpt2": (
        T.GPT2Config,
        T.GPT2LMHeadModel,
        dict(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),  # fmt: skip
    "gpt_neox": (
        T.GPTNeoXConfig,
        T.GPTNeoXForCausalLM,
        dict(
            COMMON,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.5,
            use_parallel_residual=True,
        ),
    ),  # fmt: skip
}


def make(family: str, seed: int = 0) -> torch.nn.Module:
    """A seeded, randomly initialized model in eval mode (norm weights perturbed off 1)."""
    cfg_cls, model_cls, kw = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms start at 1 and biases at 0: make both matter
                p.add_(torch.randn_like(p) * 0.1)
    return model
