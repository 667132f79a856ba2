"""Hypothesis strategies for random, well-typed, *LLM-shaped* IR graphs: decoder stacks.

:mod:`tests.ir.strategies` grows arbitrary graphs from a pool of values; this module builds what the
frontends produce for real language models, with the architecture drawn at random: an embedding
(learned positions or RoPE), ``layers`` decoder blocks of ``norm -> q/k/v (separate or fused and
sliced, optional biases) -> per-head q/k RMSNorm (optional) -> RoPE -> KV-cache concat ->
attention (GQA, causal, sliding windows per layer, default or explicit scale) -> o_proj ->
residual`` and ``norm -> MLP (SwiGLU, GeGLU, GELU, GELU-tanh or ReLU) -> residual`` (or GPT-J's
parallel residual), a final norm and an LM head (possibly tied to the embedding). Everything
follows the LM ABI (``llmc-lm-v1``: inputs ``input_ids``, ``positions``, ``past_k_<i>``,
``past_v_<i>``; outputs ``logits``, ``present_k_<i>``, ``present_v_<i>``), so the
graphs calibrate, lower and run like frontend models.

Stable API (other suites import it)::

    from tests.ir.strategies_lm import lm_cases, widen

``lm_cases(*, dtypes=DTYPES, formats=FORMATS, max_layers=2, cache=None) -> SearchStrategy[LMCase]``
    An :class:`LMCase`: a graph that passes :func:`llmc.ir.verify` (asserted), concrete inputs by
    name (``input_ids`` below the vocabulary, ``positions = past + arange(seq)``, caches ~ N(0, 1))
    and the symbol sizes (``batch`` 1..3, ``seq`` 1..9, ``past`` 0..6; ``past`` is 0 without a
    cache). ``dtypes``: the model dtypes to draw from (params, activations and caches all in it);
    ``formats``: the storage formats linear weights may get, a subset of :data:`FORMATS`
    (``dense``, ``unstructured``, ``nm``, ``quant`` int2..int8 per channel or grouped, symmetric
    or not, ``quant_nm``); ``cache`` True/False forces the KV cache on/off (None: drawn).

``widen(graph) -> Graph``
    The same graph computing in float64 (every float type, param and cast/constant dtype widened;
    quantized params keep their codes and scales): the fp64 reference of accuracy tests.

"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st

from llmc.ir import Graph, GraphBuilder, Param, QuantSpec, SparsitySpec, StorageFormat, verify
from llmc.ir.graph import Value
from llmc.ir.types import TensorType, sym, to_torch_dtype

__all__ = ["DTYPES", "FORMATS", "LMCase", "lm_cases", "lm_inputs", "widen", "widen_inputs"]

DTYPES = ("f32", "f16", "bf16")
FORMATS = frozenset({"dense", "unstructured", "nm", "quant", "quant_nm"})
SIZES = {"batch": (1, 3), "seq": (1, 9), "past": (0, 6)}  # inclusive ranges of concrete values
MLPS = ("swiglu", "geglu", "gelu", "gelu_tanh", "relu")


@dataclass
class LMCase:
    """One generated model and a batch to run it on."""

    graph: Graph
    inputs: dict[str, torch.Tensor]
    env: dict[str, int]
    dtype: str
    arch: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return (
            f"LMCase(dtype={self.dtype}, env={self.env}, arch={self.arch})\n"
            f"{self.graph}\ninputs: "
            + ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.inputs.items())
        )


def lm_cases(
    *,
    dtypes: tuple[str, ...] = DTYPES,
    formats: frozenset[str] | set[str] = FORMATS,
    max_layers: int = 2,
    cache: bool | None = None,
) -> st.SearchStrategy[LMCase]:
    """Random LLM-shaped graphs with inputs (see the module docstring)."""
    fmts = frozenset(formats)
    if not fmts or fmts - FORMATS:
        raise ValueError(f"formats must be a non-empty subset of {sorted(FORMATS)}, got {fmts}")
    if not dtypes or set(dtypes) - set(DTYPES):
        raise ValueError(f"dtypes must be a non-empty subset of {DTYPES}, got {dtypes}")

    @st.composite
    def build(draw: Any) -> LMCase:
        arch = draw(_archs(tuple(dtypes), max_layers, cache))
        seed = draw(st.integers(0, 2**31 - 1), label="data seed")
        gen = torch.Generator().manual_seed(seed)
        g = _Builder(draw, arch, fmts, gen).build()
        verify(g, "tests/ir/strategies_lm.py generated an invalid graph")
        env = {s: draw(st.integers(lo, hi), label=s) for s, (lo, hi) in SIZES.items()}
        if not arch["cache"]:
            env["past"] = 0
        inputs = lm_inputs(g, env, arch["vocab"], seed)
        return LMCase(g, inputs, env, arch["dtype"], arch)

    return build()


def _archs(dtypes: tuple[str, ...], max_layers: int, cache: bool | None) -> Any:
    @st.composite
    def arch(draw: Any) -> dict[str, Any]:
        kvh = draw(st.sampled_from((1, 2, 4)), label="kv heads")
        layers = draw(st.integers(1, max(1, max_layers)), label="layers")
        a: dict[str, Any] = {
            "dtype": draw(st.sampled_from(dtypes), label="dtype"),
            "layers": layers,
            "hidden": draw(st.sampled_from((16, 32, 48)), label="hidden"),
            "kv_heads": kvh,
            "heads": kvh * draw(st.sampled_from((1, 2, 4)), label="group size"),
            "head_dim": draw(st.sampled_from((4, 8, 16)), label="head dim"),
            "ffn": draw(st.sampled_from((16, 24, 48, 72, 136)), label="ffn"),
            "vocab": draw(st.sampled_from((16, 40, 100)), label="vocab"),
            "norm": draw(st.sampled_from(("rms_norm", "layer_norm")), label="norm"),
            "mlp": draw(st.sampled_from(MLPS), label="mlp"),
            "positions": draw(st.sampled_from(("rope", "learned")), label="positions"),
            "fused_qkv": draw(st.booleans(), label="fused qkv"),
            "qk_norm": draw(st.booleans(), label="qk norm"),  # Qwen3 / OLMo 2: per-head RMSNorm
            "attn_scale": draw(st.sampled_from((0.0, 0.0, 0.125, 0.5)), label="attention scale"),
            "qkv_bias": draw(st.booleans(), label="qkv bias"),
            "mlp_bias": draw(st.booleans(), label="mlp bias"),
            "parallel": draw(st.booleans(), label="parallel residual"),
            "tied": draw(st.booleans(), label="tied lm head"),
            "cache": draw(st.booleans(), label="kv cache") if cache is None else cache,
            # one window per layer (0: full attention), as Mistral / Gemma 2 alternate them
            "windows": [
                draw(st.sampled_from((0, 0, 1, 2, 3)), label="window") for _ in range(layers)
            ],
        }
        if a["positions"] == "rope" and draw(st.booleans(), label="rope options"):
            d = a["head_dim"]
            a["rope"] = {
                "theta": draw(st.sampled_from((10000.0, 500000.0))),
                "rotary_dim": draw(st.sampled_from((0, d // 2))),
                "interleaved": draw(st.booleans()),
                "scaling": draw(st.sampled_from(("", "linear", "llama3"))),
                "factor": 2.0,
            }
        if a["heads"] * a["head_dim"] < 8:  # keep every width a multiple of 8 (N:M up to 4:8)
            a["head_dim"] = 8
        return a

    return arch()


class _Builder:
    def __init__(
        self, draw: Any, arch: dict[str, Any], fmts: frozenset[str], gen: torch.Generator
    ) -> None:
        self.draw = draw
        self.a = arch
        self.fmts = fmts
        self.gen = gen
        self.dt = arch["dtype"]
        self.tdt = to_torch_dtype(self.dt)
        self.b = GraphBuilder("lm")

    # -- params ------------------------------------------------------------------------------
    def rand(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * std

    def dense(self, name: str, value: torch.Tensor) -> Value:
        return self.b.param(name, Param.dense(name, value.to(self.tdt).contiguous()))

    def norm_params(self, scope: str, h: int) -> list[Value]:
        w = [self.dense(f"{scope}.weight", 1.0 + self.rand(h, std=0.1))]
        if self.a["norm"] == "layer_norm":
            w.append(self.dense(f"{scope}.bias", self.rand(h, std=0.1)))
        return w

    def weight(self, name: str, out_f: int, in_f: int) -> Value:
        """A ``[out, in]`` weight in a storage format drawn from the allowed ones."""
        kinds = sorted(self.fmts)
        if in_f % 2:
            kinds = [k for k in kinds if "nm" not in k] or ["dense"]
        kind = self.draw(st.sampled_from(kinds), label=f"format of {name}")
        std = 1.0 / math.sqrt(in_f)
        mask, sparsity = None, None
        if kind in ("nm", "quant_nm"):
            opts = [(n, m) for n, m in ((1, 2), (2, 4), (1, 4), (4, 8)) if in_f % m == 0]
            n, m = self.draw(st.sampled_from(opts), label="N:M")
            scores = torch.rand(out_f, in_f // m, m, generator=self.gen)
            mask = (scores.argsort(-1).argsort(-1) < n).reshape(out_f, in_f)
            sparsity = SparsitySpec("nm", n, m, n / m)
        elif kind == "unstructured":
            mask = torch.rand(out_f, in_f, generator=self.gen) < 0.5
            sparsity = SparsitySpec("unstructured", density=float(mask.float().mean()))
        ttype = TensorType((out_f, in_f), self.dt)
        if not kind.startswith("quant"):
            w = self.rand(out_f, in_f, std=std)
            if mask is not None:
                w = w * mask
            p = Param(name, ttype, StorageFormat(None, sparsity), {"value": w.to(self.tdt)})
            return self.b.param(name, p)
        sym_ = self.draw(st.booleans(), label="symmetric")
        bits = self.draw(st.sampled_from((2, 3, 4, 6, 8) if sym_ else (2, 3, 4, 6)), label="bits")
        groups_ok = sorted({0, *(g for g in (4, 8, 16) if in_f % g == 0 and g < in_f)})
        group = self.draw(st.sampled_from(groups_ok), label="group")
        sdt = self.draw(st.sampled_from(("f32", "f16")), label="scale dtype")
        q = QuantSpec(bits, group, sym_, "rtn", scale_dtype=sdt)
        ng = 1 if group == 0 else in_f // group
        codes = torch.randint(q.qmin, q.qmax + 1, (out_f, in_f), generator=self.gen)
        scale = (torch.rand(out_f, ng, generator=self.gen) + 0.5) * std / 2 ** (bits - 1)
        data = {"scale": scale.to(q.scale_torch_dtype)}
        zfull = torch.zeros_like(codes)
        if not sym_:
            zero = torch.randint(q.qmin, q.qmax + 1, (out_f, ng), generator=self.gen)
            data["zero"] = zero.to(torch.int8)
            zfull = zero.repeat_interleave(in_f // ng, dim=1)
        if mask is not None:
            codes = torch.where(mask, codes, zfull)
        data["qvalue"] = codes.to(torch.int8)
        return self.b.param(name, Param(name, ttype, StorageFormat(q, sparsity), data))

    def linear(self, x: Value, name: str, out_f: int, bias: bool, block: str) -> Value:
        in_f = int(x.type.shape[-1])
        with self.b.scope(name, block):
            args = [x, self.weight(f"{name}.weight", out_f, in_f)]
            if bias:
                args.append(self.dense(f"{name}.bias", self.rand(out_f, std=0.1)))
            return self.b.emit("linear", *args)

    def norm(self, x: Value, scope: str) -> Value:
        h = int(x.type.shape[-1])
        with self.b.scope(scope, "norm"):
            eps = self.draw(st.sampled_from((1e-5, 1e-6)), label="eps")
            return self.b.emit(self.a["norm"], x, *self.norm_params(scope, h), eps=eps)

    # -- the model ---------------------------------------------------------------------------
    def build(self) -> Graph:
        a, b = self.a, self.b
        B, S, P = sym("batch"), sym("seq"), sym("past")
        H, KVH, D, hid = a["heads"], a["kv_heads"], a["head_dim"], a["hidden"]
        ids = b.input("input_ids", TensorType((B, S), "i64"))
        pos = b.input("positions", TensorType((B, S), "i64"))
        past = []
        if a["cache"]:
            for i in range(a["layers"]):
                past.append(
                    (
                        b.input(f"past_k_{i}", TensorType((B, KVH, P, D), self.dt)),
                        b.input(f"past_v_{i}", TensorType((B, KVH, P, D), self.dt)),
                    )
                )
        table = self.dense("model.embed_tokens.weight", self.rand(a["vocab"], hid))
        with b.scope("model.embed_tokens", "embed"):
            h = b.emit("embedding", ids, table)
        if a["positions"] == "learned":
            wpe = self.dense("model.embed_positions.weight", self.rand(16, hid, std=0.5))
            with b.scope("model.embed_positions", "embed"):
                h = b.emit("add", h, b.emit("embedding", pos, wpe))
        presents: list[Value] = []
        for i in range(a["layers"]):
            h = self.layer(i, h, pos, past[i] if past else None, presents)
        h = self.norm(h, "model.norm")
        with b.scope("lm_head", "head"):
            if a["tied"]:
                logits = b.emit("linear", h, table, name="logits")
            else:
                w = self.weight("lm_head.weight", a["vocab"], hid)
                logits = b.emit("linear", h, w, name="logits")
        b.output(logits, *presents)
        g = b.finish()
        g.meta = {
            "abi": "llmc-lm-v1",
            "family": "fuzz",
            "num_layers": a["layers"],
            "num_heads": H,
            "num_kv_heads": KVH,
            "head_dim": D,
            "hidden_size": hid,
            "intermediate_size": a["ffn"],
            "vocab_size": a["vocab"],
            "max_position_embeddings": 16,
            "dtype": self.dt,
        }
        if a["positions"] == "learned":
            g.meta["position_embedding"] = "learned"
        return g

    def layer(
        self,
        i: int,
        h: Value,
        pos: Value,
        past: tuple[Value, Value] | None,
        presents: list[Value],
    ) -> Value:
        a, b = self.a, self.b
        B, S = sym("batch"), sym("seq")
        H, KVH, D = a["heads"], a["kv_heads"], a["head_dim"]
        pre = f"model.layers.{i}"
        x = self.norm(h, f"{pre}.input_layernorm")
        att = f"{pre}.self_attn"
        with b.scope(att, "attn"):
            if a["fused_qkv"]:  # GPT-2's c_attn / Phi's Wqkv, split by slices
                qkv = self.linear(x, f"{att}.qkv_proj", (H + 2 * KVH) * D, a["qkv_bias"], "attn")
                ends = [H * D, (H + KVH) * D, (H + 2 * KVH) * D]
                q = b.emit("slice", qkv, dim=-1, start=0, end=ends[0])
                k = b.emit("slice", qkv, dim=-1, start=ends[0], end=ends[1])
                v = b.emit("slice", qkv, dim=-1, start=ends[1], end=ends[2])
            else:
                q = self.linear(x, f"{att}.q_proj", H * D, a["qkv_bias"], "attn")
                k = self.linear(x, f"{att}.k_proj", KVH * D, a["qkv_bias"], "attn")
                v = self.linear(x, f"{att}.v_proj", KVH * D, a["qkv_bias"], "attn")
            heads: dict[str, Value] = {}
            for name, t, nh in (("q", q, H), ("k", k, KVH), ("v", v, KVH)):
                t = b.emit("reshape", t, shape=(B, S, nh, D))
                if a["qk_norm"] and name != "v":
                    with b.scope(f"{att}.{name}_norm", "norm"):
                        w = self.dense(f"{att}.{name}_norm.weight", 1.0 + self.rand(D, std=0.1))
                        t = b.emit("rms_norm", t, w, eps=1e-6)
                heads[name] = b.emit("permute", t, perm=(0, 2, 1, 3))
            if a["positions"] == "rope":
                with b.scope(att, "rope"):
                    for name in ("q", "k"):
                        heads[name] = b.emit("rope", heads[name], pos, **a.get("rope", {}))
            if past is not None:
                for j, name in enumerate(("k", "v")):
                    heads[name] = b.emit(
                        "concat", past[j], heads[name], dim=2, name=f"present_{name}_{i}"
                    )
                    presents.append(heads[name])
            kw: dict[str, Any] = {}
            if a["windows"][i]:
                kw["window"] = a["windows"][i]
            if a["attn_scale"]:
                kw["scale"] = a["attn_scale"]
            o = b.emit("attention", heads["q"], heads["k"], heads["v"], **kw)
            o = b.emit("reshape", b.emit("permute", o, perm=(0, 2, 1, 3)), shape=(B, S, H * D))
        o = self.linear(o, f"{att}.o_proj", a["hidden"], a["qkv_bias"], "attn")
        if a["parallel"]:  # GPT-J / NeoX: attention and MLP read the same normed input
            m = self.mlp(x, pre)
            return b.emit("add", b.emit("add", h, o), m)
        h = b.emit("add", h, o)
        m = self.mlp(self.norm(h, f"{pre}.post_attention_layernorm"), pre)
        return b.emit("add", h, m)

    def mlp(self, x: Value, pre: str) -> Value:
        a, b = self.a, self.b
        kind, ffn, bias = a["mlp"], a["ffn"], a["mlp_bias"]
        mlp = f"{pre}.mlp"
        if kind in ("swiglu", "geglu"):
            gate = self.linear(x, f"{mlp}.gate_proj", ffn, bias, "ffn")
            up = self.linear(x, f"{mlp}.up_proj", ffn, bias, "ffn")
            with b.scope(mlp, "ffn"):
                act = b.emit("silu" if kind == "swiglu" else "gelu", gate)
                y = b.emit("mul", act, up)
            return self.linear(y, f"{mlp}.down_proj", a["hidden"], bias, "ffn")
        y = self.linear(x, f"{mlp}.fc1", ffn, bias, "ffn")
        with b.scope(mlp, "ffn"):
            if kind == "gelu_tanh":
                y = b.emit("gelu", y, approximate="tanh")
            else:
                y = b.emit(kind, y)
        return self.linear(y, f"{mlp}.fc2", a["hidden"], bias, "ffn")


# ------------------------------------------------------------------------------------------ inputs


def lm_inputs(g: Graph, env: dict[str, int], vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch for an LM-ABI graph: valid ids, ``positions = past + arange(seq)``, caches
    ~ N(0, 1) in their declared dtype."""
    gen = torch.Generator().manual_seed(seed)
    bsz, s, p = env["batch"], env["seq"], env["past"]
    out: dict[str, torch.Tensor] = {}
    for v in g.inputs:
        if v.name == "input_ids":
            out[v.name] = torch.randint(0, vocab, (bsz, s), generator=gen)
        elif v.name == "positions":
            out[v.name] = (p + torch.arange(s)).expand(bsz, s).contiguous()
        else:
            shape = v.type.concrete(env)
            out[v.name] = torch.randn(shape, generator=gen).to(to_torch_dtype(v.type.dtype))
    return out


# ------------------------------------------------------------------------------------------ widen

_FLOAT_TYPE = re.compile(r"\b(?:f32|f16|bf16)(?=\[)")
_FLOAT_ATTR = re.compile(r'(dtype = "?)(?:f32|f16|bf16)\b')


def widen(g: Graph) -> Graph:
    """``g`` computing in float64 (see the module docstring)."""
    from llmc.ir.parser import parse_graph
    from llmc.ir.printer import print_graph

    text = _FLOAT_ATTR.sub(r"\g<1>f64", _FLOAT_TYPE.sub("f64", print_graph(g)))
    w = parse_graph(text)
    for name, p in g.params.items():
        t = p.type.with_dtype("f64") if p.type.is_float else p.type
        data = dict(p.data)
        if p.format.quant is None and p.type.is_float:
            data["value"] = data["value"].to(torch.float64)
        w.params[name] = Param(p.name, t, p.format, data)
    w.meta = dict(g.meta, dtype="f64")
    verify(w, "widen() produced an invalid graph")
    return w


def widen_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in inputs.items()}
