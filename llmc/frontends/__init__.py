"""Frontends: models in, llmc IR out.

:func:`load_model` resolves a model spec:

- a local Hugging Face directory (``config.json`` + ``*.safetensors``), read only through
  :mod:`llmc.frontends.checkpoint`;
- a llama.cpp GGUF file (Llama family), or a directory holding exactly one ``*.gguf`` and no
  ``*.safetensors`` (:mod:`llmc.frontends.gguf`);
- ``tiny``: the trained model shipped in ``llmc/models/tiny``;
- an architecture-only zoo name (:func:`llmc.frontends.zoo.names`): real configs, ``meta`` weights;
- ``path/to/file.py:factory``: a function returning an ``nn.Module`` or ``(module, example_inputs)``.

A directory that exists wins over a built-in name of the same spelling. Causal LMs follow the LM
ABI ``llmc-lm-v1`` (docs/frontend.md). Example::

    m = load_model("tiny")
    m.graph.meta["num_layers"], m.tokenizer.encode("hi")
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.errors import ModelLoadError

if TYPE_CHECKING:  # importing llmc.ir imports torch: llmc.frontends.archs must stay light
    from llmc.ir.graph import Graph

__all__ = ["LoadedModel", "load_model", "from_hf_model", "from_module"]


@dataclass
class LoadedModel:
    """A model ready for passes: its IR ``graph``, the ``config`` dict it was built from, its
    ``tokenizer`` (None when the model has none), a short ``name`` and the ``source`` spec."""

    graph: Graph
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None
    name: str = ""
    source: str = ""


def _graph_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "model"


def from_hf_model(model: Any, *, name: str) -> Graph:
    from llmc.frontends.hf import from_hf_model as _from_hf

    return _from_hf(model, name=name)


def from_module(module: Any, example_inputs: Any, *, name: str) -> Graph:
    from llmc.frontends.generic import from_module as _from_module

    return _from_module(module, example_inputs, name=name)


def _load_dir(
    d: Path, name: str, source: str, allow_pickle: bool, dtype: str | None
) -> LoadedModel:
    from llmc.frontends.hf_dir import has_tokenizer, load_hf_dir

    graph, cfg = load_hf_dir(d, allow_pickle=allow_pickle, dtype=dtype, name=_graph_name(name))
    tok = None
    if has_tokenizer(d):
        from llmc.tokenizer import load_tokenizer

        tok = load_tokenizer(d)
    return LoadedModel(graph, cfg, tok, name, source)


def load_model(spec: str, *, allow_pickle: bool = False, dtype: str | None = None) -> LoadedModel:
    """Load a model spec (see the module docstring) as IR.

    ``dtype`` (``f32``, ``f16``, ``bf16``) overrides the dtype the config or checkpoint uses.
    Raises :class:`~llmc.errors.ModelLoadError` (one line naming the file and the problem) for bad
    input, :class:`~llmc.errors.UnsupportedOpError` for models the frontend cannot map.
    """
    from llmc.frontends import zoo
    from llmc.frontends.generic import is_factory_spec

    spec = str(spec)
    if is_factory_spec(spec):
        return _load_factory(spec, dtype)
    p = Path(spec)
    if p.is_dir() or p.suffix.lower() == ".gguf":
        from llmc.frontends.gguf import gguf_in_dir, is_gguf, load_gguf

        if not p.exists():
            raise ModelLoadError(f"{p}: no such file")
        g = p if is_gguf(p) else gguf_in_dir(p) if p.is_dir() else None
        if g is not None and not (p.is_dir() and (p / "config.json").is_file()):
            graph, cfg, tok = load_gguf(g, dtype=dtype, name=_graph_name(g.stem))
            return LoadedModel(graph, cfg, tok, g.stem, str(p))
    if p.is_dir():
        return _load_dir(p, p.resolve().name, str(p), allow_pickle, dtype)
    if spec == "tiny":
        from llmc.models import TINY_DIR

        if not (TINY_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"{TINY_DIR}: the built-in 'tiny' model is not installed (train it with "
                "tools/train_tiny.py)"
            )
        return _load_dir(TINY_DIR, "tiny", "tiny", False, dtype)
    if spec in zoo.names():
        g = zoo.build(spec, dtype=dtype)
        return LoadedModel(g, zoo.config(spec), None, spec, f"zoo:{spec}")
    if p.exists():
        raise ModelLoadError(f"{p}: not a model directory (expected a folder with config.json)")
    known = ["tiny", *zoo.names()]
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ModelLoadError(
        f"{spec}: no such model directory, built-in name ({', '.join(known)}) or "
        f"file.py:factory{hint}"
    )


def _load_factory(spec: str, dtype: str | None) -> LoadedModel:
    import torch

    from llmc.frontends.families import ARCHITECTURES
    from llmc.frontends.generic import from_module, load_factory
    from llmc.frontends.hf_dir import parse_dtype

    module, example = load_factory(spec)
    fn = spec.rpartition(":")[2]
    target = parse_dtype(dtype, "dtype")
    if target is not None:
        from llmc.ir.types import to_torch_dtype

        module = module.to(to_torch_dtype(target))
    if type(module).__name__ in ARCHITECTURES:
        from llmc.frontends.hf import from_hf_model as _from_hf

        g = _from_hf(module, name=_graph_name(fn))
        cfg = module.config.to_dict() if hasattr(module, "config") else {}
        return LoadedModel(g, cfg, None, fn, spec)
    if example is None:
        raise ModelLoadError(
            f"{spec}: a module that is not a Hugging Face causal LM needs example inputs; "
            "return (module, example_inputs) from the factory"
        )
    with torch.no_grad():
        g = from_module(module, example, name=_graph_name(fn))
    return LoadedModel(g, {}, None, fn, spec)
