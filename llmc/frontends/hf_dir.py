"""Loading a local Hugging Face model directory (config.json + *.safetensors) into the IR.

Files are read only through :mod:`llmc.frontends.checkpoint` (model directories are untrusted).
The module is built from the config with the ``transformers`` class of a supported architecture
(never ``trust_remote_code``), on the ``meta`` device, so no memory is spent on an initialization
that the checkpoint overwrites. The checkpoint is checked strictly before any weight is assigned:
every tensor the config implies must be present with its shape (names may lack the base-model
prefix, as old GPT-2 and OPT checkpoints do); extra tensors (``attn.bias`` masks, rotary caches)
are ignored. Tied weights are one tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmc.errors import ModelLoadError
from llmc.frontends import checkpoint, experts, hf_config
from llmc.frontends.archs import refusal
from llmc.frontends.families import ARCHITECTURES, Family, supported_architectures
from llmc.frontends.untrusted import check_model_files, quote
from llmc.ir.graph import Graph
from llmc.ir.types import DTYPES, to_torch_dtype

_DTYPE_ALIASES = {
    "float32": "f32",
    "fp32": "f32",
    "float": "f32",
    "float16": "f16",
    "fp16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "float64": "f64",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Read by transformers' AutoTokenizer by name: checked (regular, inside the directory) up front.
_OTHER_TOKENIZER_FILES = (
    "merges.txt",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def parse_dtype(dtype: Any, where: str = "dtype") -> str | None:
    """An IR dtype name (``f32``, ``f16``, ``bf16``) from a user or config spelling."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    d = str(dtype).lower()
    d = _DTYPE_ALIASES.get(d, d)
    if d not in ("f32", "f16", "bf16", "f64"):
        shown = repr(dtype) if len(repr(dtype)) <= 40 else repr(dtype)[:37] + "..."
        raise ModelLoadError(f"{where}: unsupported dtype {shown} (use f32, f16 or bf16)")
    return d


def architecture_of(cfg: dict[str, Any], where: str) -> Family:
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ModelLoadError(f"{where}: 'architectures' must be a non-empty list of names")
    why = refusal(cfg, where)
    if why:
        raise ModelLoadError(why)
    for a in archs:
        if a in ARCHITECTURES:
            fam = ARCHITECTURES[a]
            mt = cfg.get("model_type")
            if mt is not None and mt != fam.model_type:
                raise ModelLoadError(
                    f"{where}: model_type {quote(mt)} does not match architecture {a} "
                    f"(expected {fam.model_type!r})"
                )
            return fam
    shown = archs[0] if len(archs[0]) <= 100 else archs[0][:97] + "..."
    raise ModelLoadError(
        f"{where}: architecture {shown} is not supported "
        f"(supported: {', '.join(supported_architectures())})"
    )


def build_module(cfg: dict[str, Any], fam: Family, where: str, *, device: str = "meta") -> Any:
    """The ``transformers`` module of a config, on ``device`` (meta: no weight memory)."""
    import transformers

    arch = next(a for a in cfg["architectures"] if ARCHITECTURES.get(a) is fam)
    cls = getattr(transformers, arch)
    # transformers' run-time state, not the architecture: llmc chooses the attention
    # implementation itself. (Other private keys stay: OPT's _remove_final_layer_norm is real.)
    drop = ("auto_map", "_name_or_path", "_commit_hash", "_attn_implementation")
    conf = {k: v for k, v in cfg.items() if k not in drop and not k.startswith("_attn_impl")}
    # transformers logs its own opinions of a config (unknown rope keys, ...) on stderr; llmc's
    # checks (hf_config) are the user's channel, and stderr carries one line per error.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        hf_cfg = cls.config_class.from_dict(conf)
        with torch.device(device):
            model = cls(hf_cfg)
    except Exception as e:  # transformers raises ValueError, TypeError, ... for bad configs
        msg = " ".join(str(e).split()) or type(e).__name__
        msg = re.sub(r"^Class validation error for validator '\w+':\s*", "", msg)
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        raise ModelLoadError(f"{where}: not a valid {arch} config ({msg})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval()


def _expected(model: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Canonical state-dict names -> shapes, and alias -> canonical for tied weights."""
    from llmc.frontends.hf import param_names

    canon = param_names(model)
    shapes: dict[str, tuple[int, ...]] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        c = canon.get(name, name)
        if c != name:
            aliases[name] = c
            continue
        shapes[name] = tuple(t.shape)
    return shapes, aliases


def _rename(
    names: list[str], expected: dict[str, tuple[int, ...]], prefix: str, fam: Family
) -> dict[str, str]:
    """checkpoint name -> state-dict name: the family's legacy renames, and the base-model prefix
    where it is missing (old GPT-2 and OPT checkpoints)."""
    out = {}
    for n in names:
        m = n
        for old, new in fam.renames:
            if m.startswith(old):
                m = new + m[len(old) :]
        if m in expected:
            out[n] = m
        elif prefix and f"{prefix}.{m}" in expected:
            out[n] = f"{prefix}.{m}"
    return out


def _check(
    d: Path,
    shapes: dict[str, tuple[tuple[int, ...], str]],
    expected: dict[str, tuple[int, ...]],
    prefix: str,
    fam: Family,
    cfg: dict[str, Any] | None = None,
) -> dict[str, str]:
    rename = _rename(list(shapes), expected, prefix, fam)
    seen: dict[str, str] = {}
    for src, dst in rename.items():
        if dst in seen:
            raise ModelLoadError(
                f"{d / shapes[src][1]}: tensors {quote(seen[dst])} and {quote(src)} are both {quote(dst)}"
            )
        seen[dst] = src
    have = set(rename.values())
    missing = [n for n in expected if n not in have]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(
            f"{d}: checkpoint lacks tensor {quote(missing[0])}{more}, which the config requires"
        )
    for src, dst in rename.items():
        shape, file = shapes[src]
        want = expected[dst]
        if tuple(shape) != want:
            hint = ""
            if cfg is not None and len(shape) == len(want):
                diff = [w for g, w in zip(shape, want) if g != w]
                key = hf_config.field_with(cfg, diff[0]) if diff else None
                hint = f" (config.json: {key} = {diff[0]})" if key else ""
            raise ModelLoadError(
                f"{d / file}: tensor {quote(src)} has shape {list(shape)} but config.json implies "
                f"{list(want)}{hint}"
            )
    return rename


def load_hf_dir(
    path: str | Path, *, allow_pickle: bool = False, dtype: str | None = None, name: str = ""
) -> tuple[Graph, dict[str, Any]]:
    """The IR graph (LM ABI) of a local HF directory and its config dict.

    Order matters (inputs are untrusted): the config's values, then the checkpoint's headers, then
    the config against the tensors present, and only then is a module built (on ``meta``) and
    are the tensors it needs read."""

    d = Path(path)
    cfg = checkpoint.read_config(d)
    where = str(d / "config.json")
    fam = architecture_of(cfg, where)
    hf_config.check_values(cfg, where, fam)
    target = parse_dtype(dtype, "--dtype") or parse_dtype(
        cfg.get("torch_dtype") or cfg.get("dtype"), f"{where}: torch_dtype"
    )
    check_model_files(d, TOKENIZER_FILES + _OTHER_TOKENIZER_FILES)
    ckpt = checkpoint.Checkpoint(d, allow_pickle=allow_pickle)
    # per-expert MoE tensors on disk -> the module's stacked ones (llmc.frontends.experts)
    shapes, merges = experts.plan(fam.name, ckpt.shapes, d)

    def first_source(name: str) -> str:
        return merges.sources[name][0][0] if name in merges.sources else name

    arch = next(a for a in cfg["architectures"] if ARCHITECTURES.get(a) is fam)
    hf_config.check_against_tensors(cfg, fam, arch, shapes, where)
    model = build_module(cfg, fam, where)
    expected, aliases = _expected(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    rename = _check(d, shapes, expected, prefix, fam, cfg)
    for src in rename:
        dt = ckpt.dtype(first_source(src))
        if not dt.is_floating_point:
            raise ModelLoadError(
                f"{d / shapes[src][1]}: tensor {quote(first_source(src))} has dtype {dt}; weights "
                "must be floating point"
            )
    # A tied weight the checkpoint also stores (lm_head.weight with tie_word_embeddings): ties
    # are only safe when the stored copy is the same tensor; transformers versions disagree on
    # which one wins otherwise, so a differing copy is refused rather than silently dropped.
    tied = _rename(list(shapes), {a: () for a in aliases}, prefix, fam)
    wanted = [*rename, *tied]
    sd = ckpt.load(
        [n for n in wanted if n not in merges.sources]
        + [s for n in wanted if n in merges.sources for g in merges.sources[n] for s in g]
    )
    for n in wanted:
        if n in merges.sources:
            sd[n] = experts.assemble(merges, n, sd)
    canon_src = {dst: src for src, dst in rename.items()}
    for src, alias in tied.items():
        other = canon_src.get(aliases[alias])
        if other is not None and not torch.equal(sd[src], sd[other]):
            raise ModelLoadError(
                f"{d / shapes[src][1]}: tensor {quote(src)} differs from {quote(other)}, but "
                f"config.json ties them (tie_word_embeddings); set it to false to use both, or "
                f"remove {quote(src)}"
            )
    # The tensors view private maps of the files (checkpoint.Checkpoint.load); a converted
    # copy (another dtype, a transposed Conv1D weight) is kept by safetensors_io.keep: during a
    # compile, moved to an unlinked temporary file as it is made (compile memory, issue 14).
    from llmc.safetensors_io import keep

    weights: dict[str, torch.Tensor] = {}
    for src, dst in rename.items():
        t = sd[src]
        if target is None:
            target = {v: k for k, v in DTYPES.items()}.get(t.dtype, "f32")
        converted = t.to(to_torch_dtype(target))
        weights[dst] = converted if converted is t else keep(converted)
    del sd
    graph = trace_with_weights(model, weights, aliases, str(d), name or d.name, keep_copy=keep)
    return graph, cfg


def trace_with_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    aliases: dict[str, str],
    where: str,
    name: str,
    *,
    keep_copy: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Any:
    """Assign ``weights`` (module names, checked) to the meta-built ``model``, re-tie its tied
    weights (``aliases``: alias -> canonical name, from :func:`_expected`), check that every
    weight got data, and trace it (``keep_copy``: see :func:`llmc.frontends.hf.from_hf_model`).
    Shared by model directories and GGUF files."""
    model.load_state_dict(weights, strict=False, assign=True)
    for alias, canon_name in aliases.items():  # re-tie: assign replaced the shared tensor
        mod_name, _, attr = alias.rpartition(".")
        src_mod, _, src_attr = canon_name.rpartition(".")
        setattr(
            model.get_submodule(mod_name), attr, getattr(model.get_submodule(src_mod), src_attr)
        )
    for n, p in model.named_parameters():
        if p.device.type == "meta":
            raise ModelLoadError(f"{where}: weight {quote(n)} was not loaded (internal error)")
    from llmc.frontends.hf import from_hf_model

    graph = from_hf_model(model, name=name, keep_copy=keep_copy)
    bad = [n for n, p in graph.params.items() if p.is_meta]
    if bad:
        raise ModelLoadError(f"{where}: the traced graph reads {quote(bad[0])}, which has no data")
    return graph


def has_tokenizer(d: str | Path) -> bool:
    return any((Path(d) / f).is_file() for f in TOKENIZER_FILES)
