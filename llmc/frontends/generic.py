"""Any ``nn.Module`` -> llmc IR, and ``path/to/file.py:factory`` model specs.

A generic module is exported with its own ``forward`` signature on the example inputs (static
shapes) and mapped with the same converter as Hugging Face models; its inputs keep the argument
names, its outputs are named ``output`` (one) or ``output_{i}``. Modules that are Hugging Face
causal LMs of a supported family go through :func:`llmc.frontends.hf.from_hf_model` instead.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import torch

from llmc.errors import LlmcError, ModelLoadError, UnsupportedOpError
from llmc.frontends import canon
from llmc.frontends.fx_convert import ConvertOptions, convert_exported
from llmc.ir.graph import Graph
from llmc.ir.verify import verify


def from_module(
    module: torch.nn.Module,
    example_inputs: Any,
    *,
    name: str,
    dynamic_shapes: Any = None,
    dims: dict[str, dict[int, str]] | None = None,
) -> Graph:
    """The IR graph of ``module(*example_inputs)``.

    ``dynamic_shapes`` is passed to ``torch.export``; ``dims`` names the dynamic axes of each input
    (``{"x": {0: "batch"}}``) so they print as IR symbols.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    kwargs: dict[str, Any] = {}
    if isinstance(example_inputs, dict):
        kwargs, example_inputs = dict(example_inputs), ()
    example_inputs = tuple(example_inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(
                module, example_inputs, kwargs or None, dynamic_shapes=dynamic_shapes, strict=False
            )
    except LlmcError:
        raise
    except Exception as e:  # export raises many error types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedOpError(
            f"torch.export failed for {type(module).__name__}: {msg}"
        ) from None
    finally:
        module.train(was_training)
    n_out = len(ep.graph_signature.user_outputs)
    outs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    opts = ConvertOptions(dims=dims or {}, output_names=outs, fold_constants=True)
    g = convert_exported(ep, name, opts)
    canon.fuse_rms_norm(g)
    canon.fold_flat_linear(g)
    g.meta = {"family": "custom", "architecture": type(module).__name__}
    verify(g, "frontend (custom module)")
    return g


def _import_file(path: Path) -> Any:
    mod_name = "llmc_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path}: cannot import (not a Python file?)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # the user's file may raise anything
        sys.modules.pop(mod_name, None)
        raise ModelLoadError(f"{path}: importing failed ({type(e).__name__}: {e})") from None
    return mod


def is_factory_spec(spec: str) -> bool:
    head, sep, fn = spec.rpartition(":")
    return bool(sep) and head.endswith(".py") and fn.isidentifier()


def load_factory(spec: str) -> tuple[torch.nn.Module, Any]:
    """Call ``factory`` of ``file.py:factory``: it returns a module or ``(module, example_inputs)``."""
    head, _, fn = spec.rpartition(":")
    path = Path(head)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file (model spec {spec!r})")
    mod = _import_file(path)
    factory = getattr(mod, fn, None)
    if not callable(factory):
        raise ModelLoadError(f"{path}: has no function {fn!r}")
    try:
        result = factory()
    except LlmcError:
        raise
    except Exception as e:  # the user's factory may raise anything
        raise ModelLoadError(f"{spec}: the factory raised {type(e).__name__}: {e}") from None
    example = None
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ModelLoadError(f"{spec}: expected a module or (module, example_inputs)")
        result, example = result
    if not isinstance(result, torch.nn.Module):
        raise ModelLoadError(
            f"{spec}: the factory returned {type(result).__name__}, not a torch.nn.Module"
        )
    return result, example
