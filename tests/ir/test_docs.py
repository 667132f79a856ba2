"""docs/ir.md stays true: the op table matches the registry, every ``python`` block runs (and
prints what the ``ir`` block marked ``<!-- output-of-previous -->`` shows), every ``ir`` block
parses and prints back unchanged."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from llmc.ir import parse_graph, print_graph, verify

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ir.md"
MARK = "<!-- output-of-previous -->"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "gen_op_table", ROOT / "tools" / "gen_op_table.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _blocks() -> list[tuple[str, str, bool]]:
    """(language, code, marked as output of the previous block) in document order."""
    text = DOC.read_text()
    out = []
    prev_end = 0
    for m in _FENCE.finditer(text):
        out.append((m.group(1), m.group(2), MARK in text[prev_end : m.start()]))
        prev_end = m.end()
    return out


def test_op_table_is_up_to_date() -> None:
    tool = _tool()
    text = DOC.read_text()
    assert tool.replace_table(text, tool.op_table()) == text, (
        "docs/ir.md's op table is stale: run python tools/gen_op_table.py --write docs/ir.md"
    )
    assert tool.main(["--check", str(DOC)]) == 0


def test_op_table_lists_every_op() -> None:
    from llmc.ir import all_ops

    table = _tool().op_table()
    for name in all_ops():
        assert f"| `{name}` |" in table


_PY = [(i, b) for i, b in enumerate(_blocks()) if b[0] == "python"]
_IR = [(i, b) for i, b in enumerate(_blocks()) if b[0] == "ir"]


@pytest.mark.parametrize("index", [i for i, _ in _PY])
def test_python_blocks_run(index: int) -> None:
    blocks = _blocks()
    _, code, _ = blocks[index]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"docs/ir.md block {index}", "exec"), {"__name__": "docs_ir"})
    if index + 1 < len(blocks) and blocks[index + 1][2]:
        assert buf.getvalue() == blocks[index + 1][1] + "\n"


@pytest.mark.parametrize("index", [i for i, _ in _IR])
def test_ir_blocks_roundtrip(index: int) -> None:
    text = _blocks()[index][1]
    g = parse_graph(text)
    assert print_graph(g) == text
    verify(g)


def test_doc_has_examples() -> None:
    assert len(_PY) >= 5 and len(_IR) >= 3
    assert any(marked for _, (_, _, marked) in _IR)
