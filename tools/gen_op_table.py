"""Print the op table of docs/ir.md from the op registry (markdown).

    python tools/gen_op_table.py                  # print the table
    python tools/gen_op_table.py --write docs/ir.md   # replace the table between the markers
    python tools/gen_op_table.py --check docs/ir.md   # exit 1 if the file's table is stale

The table sits in docs/ir.md between ``<!-- op-table:begin -->`` and ``<!-- op-table:end -->``;
tests/ir/test_docs.py fails when it is out of date with the registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc.ir.registry import OpDef, all_ops  # noqa: E402

BEGIN = "<!-- op-table:begin -->"
END = "<!-- op-table:end -->"
# Groups in the order ops.py introduces them; groups added later sort after, by name.
GROUP_ORDER = ["LEAF", "UNARY", "BINARY", "MATMUL", "NORM", "LLM", "LAYOUT", "REDUCE", "CONTROL"]


def _arity(od: OpDef) -> str:
    lo, hi = od.min_inputs, od.max_inputs
    if hi is None:
        return f"{lo}+"
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _attrs(od: OpDef) -> str:
    if od.attrs is None:
        return ""
    parts = []
    for f in dataclasses.fields(od.attrs):
        if f.name in od.region_fields:
            parts.append(f"`{f.name}`: region")
            continue
        ann = str(f.type).replace(" ", "")
        text = f"`{f.name}`: {ann}"
        if f.default is not dataclasses.MISSING:
            text += f" = {f.default!r}"
        parts.append(text)
    return ", ".join(parts).replace("|", "\\|")


def _doc(od: OpDef) -> str:
    first = re.split(r"\n\s*\n", od.doc.strip(), maxsplit=1)[0] if od.doc else ""
    return " ".join(first.split()).replace("|", "\\|")


def _key(od: OpDef) -> tuple[int, str, str]:
    g = GROUP_ORDER.index(od.group) if od.group in GROUP_ORDER else len(GROUP_ORDER)
    return (g, od.group, od.name)


def op_table() -> str:
    """The markdown table: one row per registered op."""
    rows = [
        "| op | group | inputs | attributes | description |",
        "|---|---|---|---|---|",
    ]
    for od in sorted(all_ops().values(), key=_key):
        cells = [f"`{od.name}`", od.group, _arity(od), _attrs(od), _doc(od)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="FILE", help="replace the table in FILE")
    mode.add_argument("--check", metavar="FILE", help="exit 1 if FILE's table is stale")
    args = ap.parse_args(argv)
    table = op_table()
    if args.write:
        path = Path(args.write)
        path.write_text(replace_table(path.read_text(), table))
        return 0
    if args.check:
        path = Path(args.check)
        text = path.read_text()
        if replace_table(text, table) != text:
            print(f"{path}: op table is stale; run python tools/gen_op_table.py --write {path}")
            return 1
        return 0
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
