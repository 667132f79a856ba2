"""A hand-built toy language model that follows the LM ABI (llmc-lm-v1), for tests that must not
depend on the frontend: embedding, per layer rms_norm -> q/k/v -> rope -> cache concat ->
attention (GQA) -> o_proj -> residual -> rms_norm -> SwiGLU -> residual, then norm and lm_head."""

from __future__ import annotations

import torch

from llmc.ir import Graph, GraphBuilder, TensorType, sym


def toy_lm(
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 64,
    vocab: int = 300,
    seed: int = 0,
    prune: tuple[int, int, int] | None = None,
) -> Graph:
    """With ``prune = (layer, lo, hi)``, the tokens at positions ``lo <= p < hi`` are dropped
    before ``layer`` (a ``gather_rows`` of the residual stream and the positions): layers from
    ``layer`` on see fewer rows and keep shorter caches, an ``llmc-lm-v2`` graph whose layer ``i``
    caches ``past_{i}`` positions."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    hd = hidden // heads
    B, S, P = sym("batch"), sym("seq"), sym("past")
    b = GraphBuilder("toy")
    ids = b.input("input_ids", TensorType((B, S), "i64"))
    pos = b.input("positions", TensorType((B, S), "i64"))
    past = []
    for i in range(layers):
        Pi = sym(f"past_{i}") if prune else P
        k = b.input(f"past_k_{i}", TensorType((B, kv_heads, Pi, hd), "f32"))
        v = b.input(f"past_v_{i}", TensorType((B, kv_heads, Pi, hd), "f32"))
        past.append((k, v))
    with b.scope("model.embed_tokens", "embed"):
        h = b.emit("embedding", ids, b.param("model.embed_tokens.weight", w(vocab, hidden)))
    presents = []
    for i in range(layers):
        pre = f"model.layers.{i}"
        if prune and i == prune[0]:
            with b.scope(f"{pre}.prune", "prune"):
                lo = b.emit("lt", pos, b.emit("constant", value=float(prune[1]), dtype="i64"))
                hi = b.emit("ge", pos, b.emit("constant", value=float(prune[2]), dtype="i64"))
                keep = b.emit("where", lo, lo, hi, name=f"keep_mask_{i}")
                h = b.emit("gather_rows", h, keep, length=f"keep_{i}")
                pos = b.emit("gather_rows", pos, keep, length=f"keep_{i}")
                S = sym(f"keep_{i}")
        with b.scope(f"{pre}.input_layernorm", "norm"):
            x = b.emit(
                "rms_norm",
                h,
                b.param(f"{pre}.input_layernorm.weight", 1 + w(hidden, std=0.1)),
                eps=1e-5,
            )
        with b.scope(f"{pre}.self_attn", "attn"):

            def proj(name: str, out: int, x=x, pre=pre) -> object:
                with b.scope(f"{pre}.self_attn.{name}", "attn"):
                    return b.emit(
                        "linear", x, b.param(f"{pre}.self_attn.{name}.weight", w(out, hidden))
                    )

            q = proj("q_proj", heads * hd)
            k = proj("k_proj", kv_heads * hd)
            v = proj("v_proj", kv_heads * hd)
            q = b.emit("permute", b.emit("reshape", q, shape=(B, S, heads, hd)), perm=(0, 2, 1, 3))
            k = b.emit(
                "permute", b.emit("reshape", k, shape=(B, S, kv_heads, hd)), perm=(0, 2, 1, 3)
            )
            v = b.emit(
                "permute", b.emit("reshape", v, shape=(B, S, kv_heads, hd)), perm=(0, 2, 1, 3)
            )
            q = b.emit("rope", q, pos, theta=10000.0)
            k = b.emit("rope", k, pos, theta=10000.0)
            kf = b.emit("concat", past[i][0], k, dim=2, name=f"present_k_{i}")
            vf = b.emit("concat", past[i][1], v, dim=2, name=f"present_v_{i}")
            presents += [kf, vf]
            a = b.emit("attention", q, kf, vf, causal=True)
            a = b.emit("reshape", b.emit("permute", a, perm=(0, 2, 1, 3)), shape=(B, S, hidden))
        with b.scope(f"{pre}.self_attn.o_proj", "attn"):
            a = b.emit("linear", a, b.param(f"{pre}.self_attn.o_proj.weight", w(hidden, hidden)))
        h = b.emit("add", h, a)
        with b.scope(f"{pre}.post_attention_layernorm", "norm"):
            x = b.emit(
                "rms_norm",
                h,
                b.param(f"{pre}.post_attention_layernorm.weight", 1 + w(hidden, std=0.1)),
                eps=1e-5,
            )
        with b.scope(f"{pre}.mlp", "ffn"):
            gate = b.emit("linear", x, b.param(f"{pre}.mlp.gate_proj.weight", w(ffn, hidden)))
            up = b.emit("linear", x, b.param(f"{pre}.mlp.up_proj.weight", w(ffn, hidden)))
            m = b.emit("mul", b.emit("silu", gate), up)
            m = b.emit("linear", m, b.param(f"{pre}.mlp.down_proj.weight", w(hidden, ffn)))
        h = b.emit("add", h, m)
    with b.scope("model.norm", "norm"):
        h = b.emit("rms_norm", h, b.param("model.norm.weight", 1 + w(hidden, std=0.1)), eps=1e-5)
    with b.scope("lm_head", "head"):
        logits = b.emit("linear", h, b.param("lm_head.weight", w(vocab, hidden)), name="logits")
    b.output(logits, *presents)
    graph = b.finish()
    graph.meta = {
        "abi": "llmc-lm-v2" if prune else "llmc-lm-v1",
        "family": "toy",
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": hd,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "dtype": "f32",
    }
    return graph
