"""The import layering, checked on the source (ast), so a lazy import inside a function counts too.

- ``llmc/targets`` is a leaf: it imports from llmc only ``llmc.targets``, ``llmc.ir``,
  ``llmc.errors`` and ``llmc.cache`` (backends, fpga, compile, cli, runtime and passes import it;
  its kind hooks are "module:attr" strings resolved on use);
- ``llmc/ir`` imports nothing above itself (only ``llmc.ir`` and ``llmc.errors``);
- nothing in ``llmc`` imports ``llmc.cli``: the shared console helpers live in ``llmc.console``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmc"


def llmc_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``llmc`` import in ``path``, wherever it sits in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
            if node.module == "llmc":  # from llmc import x: x may be a submodule
                mods = [f"llmc.{a.name}" for a in node.names]
            out += [(node.lineno, m) for m in mods]
    return [(ln, m) for ln, m in out if m == "llmc" or m.startswith("llmc.")]


def violations(package: str, allowed: tuple[str, ...]) -> list[str]:
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for line, mod in llmc_imports(f):
            if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{f.relative_to(ROOT.parent)}:{line} imports {mod}")
    return bad


def test_targets_is_a_leaf():
    allowed = ("llmc.targets", "llmc.ir", "llmc.errors", "llmc.cache")
    assert violations("targets", allowed) == []


def test_ir_imports_nothing_above_it():
    assert violations("ir", ("llmc.ir", "llmc.errors")) == []


def test_nothing_imports_the_cli():
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        if f == ROOT / "cli.py":
            continue
        bad += [
            f"{f.relative_to(ROOT.parent)}:{ln} imports {m}"
            for ln, m in llmc_imports(f)
            if m == "llmc.cli" or m.startswith("llmc.cli.")
        ]
    assert bad == []


@pytest.mark.parametrize(
    "src, mod",
    [
        ("from llmc.fpga.arch import load_arch", "llmc.fpga.arch"),
        ("def f():\n    import llmc.backends.pipeline", "llmc.backends.pipeline"),
        ("from llmc import cli", "llmc.cli"),
    ],
)
def test_the_check_sees_imports(tmp_path, src, mod):
    """The checker finds top-level, function-level and ``from llmc import x`` imports (so the
    tests above can fail)."""
    f = tmp_path / "m.py"
    f.write_text(src + "\n")
    assert [m for _, m in llmc_imports(f)] == [mod]
