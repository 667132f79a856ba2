"""What the differential fuzz tests share: pass pipelines drawn at random, and accuracy checks.

**Pipelines.** :func:`pass_specs` draws one registered pass with random options, as a spec string
(``rtn:bits=3:group=8:sym=false``); :func:`ordered_pipelines` draws a pipeline in the order the
passes document (structured pruning, pruning, smoothing, quantization, attention rewrite,
clean-ups), which must succeed on any graph whose weights are not yet quantized;
:func:`any_pipelines` draws one to three passes in any order, which may legitimately refuse (prune
after quantize, quantize twice) but only with a typed :class:`~llmc.errors.LlmcError`.

**Accuracy, the way torch checks compiled code** (``torch._dynamo.utils.same``): the reference is
the same graph computed in float64 (:func:`tests.ir.strategies_lm.widen`); a result ``got`` (a
rewritten graph in the interpreter, or compiled code) may differ from it by at most ``K`` times the
error of the interpreter running the unmodified graph in its own dtype (``base``), plus a floor of
``TOL[dtype] / 10`` of the output's scale — both in RMS and in the worst element.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from llmc.errors import LlmcError
from llmc.passes import PipelineError

#: per-dtype tolerance (the floor is a tenth of it, relative to the output's scale)
TOL = {"f32": 1e-4, "f16": 1e-2, "bf16": 8e-2, "f64": 1e-7}
#: how many times the interpreter's own low-precision error a result may have
K = 3.0

PRUNERS = ("magnitude", "wanda", "sparsegpt")
QUANTIZERS = ("rtn", "gptq", "w8a8")
CLEANUPS = ("dce", "cse", "const-fold", "fuse-elementwise")
#: input-adaptive passes: they refuse models too shallow to skip in (a typed error), so the
#: ordered pipelines, which must succeed on every model, do not draw them
ADAPTIVE = ("ffn-skip", "ffn-drop", "token-prune")
ALL_PASSES = (
    *PRUNERS,
    "flap",
    *QUANTIZERS,
    "smoothquant",
    "async-softmax",
    *CLEANUPS,
    *ADAPTIVE,
)


def _opts(name: str, draw: st.DrawFn) -> list[str]:
    o: list[str] = []
    if name in PRUNERS:
        if draw(st.booleans(), label="N:M"):
            o.append("pattern=" + draw(st.sampled_from(("2:4", "1:4", "4:8", "1:2"))))
        else:
            o.append(f"sparsity={draw(st.sampled_from((0.0, 0.3, 0.5, 0.9)))}")
        if name == "magnitude" and draw(st.booleans()):
            o.append("per_row=true")
        if name == "sparsegpt":
            o.append(f"blocksize={draw(st.sampled_from((8, 16, 128)))}")
    elif name == "flap":
        o.append(f"ratio={draw(st.sampled_from((0.0, 0.25, 0.5)))}")
        o.append(f"align={draw(st.sampled_from((1, 4, 8, 16)))}")
        o.append(f"compensate={draw(st.booleans())}".lower())
    elif name in ("rtn", "gptq"):
        sym = draw(st.booleans(), label="sym")
        o.append(f"bits={draw(st.integers(2, 8 if sym else 7))}")
        o.append(f"group={draw(st.sampled_from((0, 4, 8, 16, 128)))}")
        o.append(f"sym={sym}".lower())
        if name == "gptq":
            o.append(f"act_order={draw(st.booleans())}".lower())
            o.append(f"blocksize={draw(st.sampled_from((4, 16, 128)))}")
    elif name == "w8a8":
        o.append("act=" + draw(st.sampled_from(("token", "tensor"))))
    elif name == "smoothquant":
        o.append(f"alpha={draw(st.sampled_from((0.0, 0.5, 0.85, 1.0)))}")
        o.append(f"mlp_down={draw(st.booleans())}".lower())
    elif name == "token-prune":
        if draw(st.booleans(), label="average"):
            o.append(f"average={draw(st.sampled_from((0.5, 0.75, 1.0)))}")
        else:
            o.append(f"keep={draw(st.sampled_from((0.25, 0.5, 1.0)))}")
        score = draw(st.sampled_from(("attention", "pagerank", "uniform", "random")))
        o.append(f"score={score}")
        o.append(f"window={draw(st.sampled_from((0, 1, 8)))}")
        o.append(f"recent={draw(st.sampled_from((1, 4)))}")
        if score in ("attention", "pagerank") and draw(st.booleans(), label="adaptive"):
            o.append("adaptive=true")
    elif name in ADAPTIVE:
        o.append(f"protect={draw(st.sampled_from((0, 1)))}")
        if name == "ffn-skip" and draw(st.booleans(), label="threshold"):
            o.append(f"threshold={draw(st.sampled_from((-1.0, 0.5, 0.99, 1.0)))}")
            o.append(f"warmup={draw(st.sampled_from((0, 2)))}")
        else:
            o.append(f"ratio={draw(st.sampled_from((0.0, 0.25)))}")
    elif name == "async-softmax":
        o.append(f"coverage={draw(st.sampled_from((0.9, 0.9999, 1.0)))}")
        o.append("dtype=" + draw(st.sampled_from(("f32", "f16", "bf16"))))
        o.append(f"chunk={draw(st.sampled_from((1, 3, 64)))}")
    if name in (*PRUNERS, "flap", *QUANTIZERS, "smoothquant") and draw(st.booleans()):
        o.append("exclude=")  # the LM head too (tied to the embedding in some graphs)
    return o


@st.composite
def pass_specs(draw: st.DrawFn, names: tuple[str, ...] = ALL_PASSES) -> str:
    name = draw(st.sampled_from(names), label="pass")
    return ":".join([name, *_opts(name, draw)])


@st.composite
def ordered_pipelines(draw: st.DrawFn) -> str:
    """Passes in their documented order; each stage present or not (at least one pass)."""
    stages: list[str] = []
    if draw(st.booleans(), label="flap"):  # align 8+: the kept widths take N:M up to 4:8
        spec = draw(pass_specs(("flap",)))
        stages.append(spec.replace(":align=1:", ":align=8:").replace(":align=4:", ":align=16:"))
    if draw(st.booleans(), label="prune"):
        stages.append(draw(pass_specs(PRUNERS)))
    quant = draw(st.sampled_from(("", "rtn", "gptq", "w8a8", "smoothquant,w8a8")), label="quant")
    if quant == "smoothquant,w8a8":
        stages += [draw(pass_specs(("smoothquant",))), draw(pass_specs(("w8a8",)))]
    elif quant:
        stages.append(draw(pass_specs((quant,))))
    if draw(st.booleans(), label="async"):
        stages.append(draw(pass_specs(("async-softmax",))))
    stages += draw(st.lists(st.sampled_from(CLEANUPS), max_size=3), label="cleanups")
    if not stages:
        stages.append(draw(pass_specs(tuple(n for n in ALL_PASSES if n not in ADAPTIVE))))
    return ",".join(stages)


def any_pipelines() -> st.SearchStrategy[str]:
    return st.lists(pass_specs(), min_size=1, max_size=3).map(",".join)


def is_clean_refusal(e: BaseException) -> bool:
    """A pipeline failure that is a typed, user-facing error (not a crash inside a pass)."""
    if isinstance(e, PipelineError):
        return e.__cause__ is None or isinstance(e.__cause__, LlmcError)
    return isinstance(e, LlmcError)


# ---------------------------------------------------------------------------------------- accuracy


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt()) if t.numel() else 0.0


def check_accuracy(
    got: torch.Tensor, base: torch.Tensor, ref: torch.Tensor, dtype: str, what: str = ""
) -> None:
    """``got`` is as close to the fp64 ``ref`` as ``K`` times the interpreter's ``base`` (see
    the module docstring); raises AssertionError with the numbers otherwise."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == base.dtype, f"{what}: dtype {got.dtype} != {base.dtype}"
    g, b, r = got.double(), base.double(), ref.double()
    assert torch.isfinite(g).all() or not torch.isfinite(b).all(), f"{what}: non-finite values"
    scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
    floor = TOL[dtype] / 10 * scale
    e_got, e_base = _rms(g - r), _rms(b - r)
    m_got = float((g - r).abs().max()) if r.numel() else 0.0
    m_base = float((b - r).abs().max()) if r.numel() else 0.0
    ok = e_got <= K * e_base + floor and m_got <= K * m_base + 10 * floor
    assert ok, (
        f"{what} ({dtype}): error vs fp64 reference rms {e_got:.3g} / max {m_got:.3g}; the "
        f"interpreter's own rms {e_base:.3g} / max {m_base:.3g}; allowed {K:g}x + floor "
        f"{floor:.3g} (scale {scale:.3g})"
    )


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True


__all__ = [
    "ADAPTIVE",
    "ALL_PASSES",
    "CLEANUPS",
    "K",
    "PRUNERS",
    "QUANTIZERS",
    "TOL",
    "any_pipelines",
    "check_accuracy",
    "finite",
    "is_clean_refusal",
    "ordered_pipelines",
    "pass_specs",
]
