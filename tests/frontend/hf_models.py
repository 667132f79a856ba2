"""Small random Hugging Face models, one per supported family, for differential tests.

Each config exercises what makes its family different: GQA (Llama, Mistral, Qwen2), llama3
rope scaling (Llama), a sliding
window smaller than the test sequences (Mistral), qkv bias (Qwen2), learned positions with the +2
offset (OPT), Conv1D with [in, out] weights and tied embeddings (GPT-2), partial rotary and a
parallel residual (GPT-NeoX), fused qkv/gate_up with partial rotary and a window (Phi-3),
multi-query attention from a fused query_key_value with a parallel attention + MLP (Falcon),
attention and final logit soft-capping, alternating sliding/full layers, scaled embeddings and
(1 + w) norms (Gemma 2), q/k norms and a local/global rope base per layer type (Gemma 3), 4 routed experts with top-2
(Mixtral normalizes the top-2 weights; Qwen2-MoE does not and adds a gated shared expert).
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
    "phi3": (
        T.Phi3Config,
        T.Phi3ForCausalLM,
        dict(
            RMS,
            sliding_window=4,
            partial_rotary_factor=0.5,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
    "falcon": (
        T.FalconConfig,
        T.FalconForCausalLM,
        dict(
            COMMON,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            parallel_attn=True,
            new_decoder_architecture=False,
            alibi=False,
            bias=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
    # Falcon-40B's layout: new_decoder_architecture (grouped kv heads, two LayerNorms), biases
    "falcon40": (
        T.FalconConfig,
        T.FalconForCausalLM,
        dict(
            COMMON,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            alibi=False,
            bias=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
    "gemma2": (
        T.Gemma2Config,
        T.Gemma2ForCausalLM,
        dict(
            RMS,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
    "gemma3": (
        T.Gemma3TextConfig,
        T.Gemma3ForCausalLM,
        dict(
            RMS,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
    "mixtral": (
        T.MixtralConfig,
        T.MixtralForCausalLM,
        dict(RMS, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen2_moe": (
        T.Qwen2MoeConfig,
        T.Qwen2MoeForCausalLM,
        dict(
            RMS,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=80,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
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
