"""The pass registry: name -> pass class, loaded lazily.

Three sources, in lookup order:

1. built-in passes, listed in :data:`BUILTIN` as ``"module:Class"`` and imported on first use (so
   ``llmc passes`` never imports torch-heavy pass code it does not run);
2. passes registered in-process with the :func:`register_pass` decorator;
3. plugins: packages that declare an entry point in the group ``llmc.plugins``. The entry point's
   object may be a :class:`Pass` subclass (registered as is), a module (importing it runs its
   ``@register_pass`` decorators) or a callable taking no arguments (called once). Plugins are
   loaded the first time a name is not found among 1 and 2, or when the list is asked for.

Names are kebab-case; ``snake_case`` spellings find the same pass.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Any

from llmc.errors import PassError
from llmc.passes.base import Pass, UnknownPassError

ENTRY_POINT_GROUP = "llmc.plugins"

BUILTIN: dict[str, str] = {
    # clean-ups (exact rewrites)
    "dce": "llmc.passes.dce:DeadCodeElimination",
    "cse": "llmc.passes.cse:CommonSubexpressionElimination",
    "const-fold": "llmc.passes.const_fold:ConstantFolding",
    "fuse-elementwise": "llmc.passes.fuse_elementwise:FuseElementwise",
    # pruning
    "magnitude": "llmc.passes.magnitude:MagnitudePrune",
    "wanda": "llmc.passes.wanda:WandaPrune",
    "sparsegpt": "llmc.passes.sparsegpt:SparseGPTPrune",
    "flap": "llmc.passes.flap:FlapPrune",
    # quantization
    "rtn": "llmc.passes.rtn:RTNQuant",
    "gptq": "llmc.passes.gptq:GPTQQuant",
    "smoothquant": "llmc.passes.smoothquant:SmoothQuant",
    "w8a8": "llmc.passes.w8a8:W8A8",
    # adaptive execution
    "ffn-skip": "llmc.passes.ffn_skip:FFNSkip",
    "ffn-drop": "llmc.passes.ffn_skip:FFNDrop",
    "token-prune": "llmc.passes.token_prune:TokenPrune",
    # attention
    "async-softmax": "llmc.passes.async_softmax:AsyncSoftmax",
}

_USER: dict[str, type[Pass]] = {}
_LOADED: dict[str, type[Pass]] = {}
_plugins_loaded = False
_plugin_errors: list[str] = []


def canonical(name: str) -> str:
    return name.strip().replace("_", "-").lower()


def register_pass(cls: type[Pass] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a pass class (use as ``@register_pass`` or ``@register_pass(name="x")``).

    Registering a name that already exists is an error unless ``replace=True``.
    """

    def deco(c: type[Pass]) -> type[Pass]:
        if not (isinstance(c, type) and issubclass(c, Pass)):
            raise PassError(f"register_pass: {c!r} is not a subclass of llmc.passes.Pass")
        key = canonical(name or c.name)
        if not key:
            raise PassError(f"register_pass: {c.__name__} has no `name`")
        if name and c.name != name:
            c.name = name  # type: ignore[misc]
        if key in BUILTIN and not replace:
            mod, clsname = BUILTIN[key].split(":")
            if (c.__module__, c.__name__) != (mod, clsname):
                raise PassError(
                    f"pass '{key}' is a built-in llmc pass; choose another name or "
                    "pass replace=True"
                )
        existing = _USER.get(key) or _LOADED.get(key)
        if existing is not None and existing is not c and not replace:
            raise PassError(
                f"pass '{key}' is already registered ({existing.__module__}.{existing.__name__})"
                "; pass replace=True to override it"
            )
        _USER[key] = c
        return c

    return deco(cls) if cls is not None else deco


def unregister_pass(name: str) -> None:
    """Remove a user-registered pass (tests use this to clean up)."""
    _USER.pop(canonical(name), None)


def _load_builtin(key: str) -> type[Pass]:
    if key not in _LOADED:
        mod, clsname = BUILTIN[key].split(":")
        _LOADED[key] = getattr(importlib.import_module(mod), clsname)
    return _LOADED[key]


def load_plugins(*, force: bool = False) -> list[str]:
    """Load every ``llmc.plugins`` entry point once; returns the errors met (one line each)."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return list(_plugin_errors)
    _plugins_loaded = True
    _plugin_errors.clear()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj: Any = ep.load()
        except Exception as e:  # a broken plugin must not break llmc
            _plugin_errors.append(f"plugin '{ep.name}' ({ep.value}) failed to load: {e}")
            continue
        try:
            if isinstance(obj, type) and issubclass(obj, Pass):
                if canonical(obj.name) not in _USER:
                    register_pass(obj)
            elif callable(obj) and not isinstance(obj, type):
                obj()
            # a module: importing it ran its decorators
        except PassError as e:
            _plugin_errors.append(f"plugin '{ep.name}' ({ep.value}): {e}")
    return list(_plugin_errors)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; unknown names get the closest suggestion."""
    key = canonical(name)
    if key in _USER:
        return _USER[key]
    if key in BUILTIN:
        return _load_builtin(key)
    errors = load_plugins()
    if key in _USER:
        return _USER[key]
    names = all_names()
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    extra = f" ({'; '.join(errors)})" if errors else ""
    raise UnknownPassError(f"unknown pass '{name}'{hint} (see `llmc passes` for the list){extra}")


def all_names() -> list[str]:
    load_plugins()
    return sorted(set(BUILTIN) | set(_USER))


def list_passes() -> list[tuple[str, str]]:
    """Every registered pass as ``(name, one-line description)``, sorted by name."""
    out = []
    for n in all_names():
        try:
            out.append((n, get_pass(n).summary()))
        except Exception as e:  # noqa: BLE001 - listing must survive a broken pass module
            out.append((n, f"(unavailable: {e})"))
    return out
