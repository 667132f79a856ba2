"""Grouped CPU decode kernels: one call computes several linears that read the same activations
(q/k/v, gate/up), one parallel loop over the output panels of all their weights.

A kernel family (:mod:`~llmc.backends.kernels.cpu_vnni`, :mod:`~llmc.backends.kernels.cpu_avx2`)
writes its per-panel work once, as a ``T.macro`` taking the shared arguments, the scratch
buffers, one weight's buffers, its result, the panel index and the result width;
:func:`grouped_func` turns it into a PrimFunc for one to :data:`MAX_GROUP` weights. The
function's signature depends on the group size, so its (short) text is generated from a
template and parsed with the macros in scope; the kernel bodies stay in the family's module.

Argument order of the result: the shared arguments, then each weight's arguments, then one
result per weight. One call instead of one per weight: the activations are prepared once, and
the threads split the panels of the whole group, so a thread that finishes its share of a small
projection early is not left waiting at a call's end (one thread join per group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tvm import tirx
from tvm.script import tirx as T
from tvm.script.parser.core.entry import parse

F32 = "float32"
#: the most linears one grouped call computes (q/k/v)
MAX_GROUP = 3


@dataclass(frozen=True)
class Buf:
    """One buffer of a grouped kernel: its name in the generated text, shape and dtype."""

    name: str
    shape: tuple[Any, ...]
    dtype: str


_TEMPLATE = """\
@T.prim_func(private=True, s_tir=True)
def f({params}):
    T.func_attr({{"tirx.noalias": True}})
{buffers}
{prologue}
    for p in T.parallel({total}):
{dispatch}
"""


def grouped_func(
    name: str,
    shared: Sequence[Buf],
    weights: Sequence[Sequence[Buf]],
    outs: Sequence[Buf],
    panels: Sequence[int],
    panel: Any,
    scratch: Sequence[Buf] = (),
    prologue: Any = None,
) -> tirx.PrimFunc:
    """A PrimFunc running ``panel(*shared, *scratch, *weights[j], outs[j], p, n_j)`` for every
    panel ``p < panels[j]`` of every weight ``j``, in one ``T.parallel`` loop over all panels;
    ``n_j`` is ``outs[j].shape[1]``. ``scratch`` buffers are allocated in the function and
    filled first by ``prologue(*shared, *scratch)`` (serial), e.g. a quantized activation row.

    Example: ``grouped_func("k", [x], [[w0], [w1]], [c0, c1], [2, 1], panel)`` computes two
    linears of ``x`` in one call with a three-iteration parallel loop.
    """
    g = len(weights)
    assert 1 <= g <= MAX_GROUP and len(outs) == g == len(panels), (g, len(outs), len(panels))
    args = [*shared, *(b for w in weights for b in w), *outs]
    env: dict[str, Any] = {"T": T, "_panel": panel, "_prologue": prologue}
    for b in [*args, *scratch]:
        env[f"_shape_{b.name}"] = b.shape
    lines = [
        f"    {b.name} = T.match_buffer({b.name}_h, _shape_{b.name}, {b.dtype!r})" for b in args
    ]
    lines += [f"    {b.name} = T.alloc_buffer(_shape_{b.name}, {b.dtype!r})" for b in scratch]
    front = ", ".join(b.name for b in [*shared, *scratch])
    pro = f"    _prologue({front})" if prologue is not None else ""
    calls, start = [], 0
    for j in range(g):
        call = ", ".join(
            [
                front,
                *(b.name for b in weights[j]),
                outs[j].name,
                f"p - {start}" if start else "p",
                str(outs[j].shape[1]),
            ]
        )
        if g == 1:
            calls.append(f"        _panel({call})")
        else:
            head = "if" if j == 0 else "elif" if j < g - 1 else "else"
            cond = f" p < {start + panels[j]}" if j < g - 1 else ""
            calls.append(f"        {head}{cond}:\n            _panel({call})")
        start += panels[j]
    src = _TEMPLATE.format(
        params=", ".join(f"{b.name}_h: T.handle" for b in args),
        buffers="\n".join(lines),
        prologue=pro,
        total=start,
        dispatch="\n".join(calls),
    )
    f = parse(src, extra_vars=env, s_tir=True)
    f = f.with_attr("global_symbol", name)
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


def _panels(n_dims: Sequence[int], nb: int) -> list[int]:
    return [(n + nb - 1) // nb for n in n_dims]


def _results(rows: Any, n_dims: Sequence[int]) -> list[Buf]:
    return [Buf(f"c{j}", (rows, n), F32) for j, n in enumerate(n_dims)]


def weight_only_args(
    rows: Any,
    n_dims: Sequence[int],
    nb: int,
    byte_rows: int,
    parts: int,
    kp: int,
    nblk: int,
    ngroups: int,
    s_dtype: str,
    shared_offset: bool = False,
) -> tuple[list[int], list[Buf], list[list[Buf]], list[Buf]]:
    """The :func:`grouped_func` arguments of a weight-only kernel family (VNNI, AVX2) with
    ``nb``-output panels: the panel counts ``ceil(n / nb)``; the prepared activations ``xd [M,
    parts, K']`` int8, ``xs [M, K'/ab, parts]``, ``gs [M, K/group]``; each weight's ``codes{j}
    [P_j, byte_rows, nb, 4]`` uint8 and ``scale{j}``/``offset{j} [P_j, K/group, nb]``
    (``shared_offset``: one ``[1, 1, nb]`` offset row); one float32 ``c{j} [M, n_j]`` each."""
    panels = _panels(n_dims, nb)
    shared = [
        Buf("xd", (rows, parts, kp), "int8"),
        Buf("xs", (rows, nblk, parts), F32),
        Buf("gs", (rows, ngroups), F32),
    ]
    weights = [
        [
            Buf(f"codes{j}", (pj, byte_rows, nb, 4), "uint8"),
            Buf(f"scale{j}", (pj, ngroups, nb), s_dtype),
            Buf(f"offset{j}", (1, 1, nb) if shared_offset else (pj, ngroups, nb), s_dtype),
        ]
        for j, pj in enumerate(panels)
    ]
    return panels, shared, weights, _results(rows, n_dims)


def int8_args(
    rows: Any, n_dims: Sequence[int], nb: int, kq: int, wsum: bool = False
) -> tuple[list[int], list[list[Buf]], list[Buf]]:
    """The panel counts, weights and results of a W8A8 kernel family: each weight's
    ``codes{j} [P_j, K'/4, nb, 4]`` int8, then (``wsum``) its code row sums ``wsum{j} [P_j, nb]``
    int32, then its scales ``ws{j} [P_j, nb]`` float32; one float32 ``c{j} [M, n_j]`` each."""
    panels = _panels(n_dims, nb)
    weights = [
        [
            Buf(f"codes{j}", (pj, kq, nb, 4), "int8"),
            *([Buf(f"wsum{j}", (pj, nb), "int32")] if wsum else []),
            Buf(f"ws{j}", (pj, nb), F32),
        ]
        for j, pj in enumerate(panels)
    ]
    return panels, weights, _results(rows, n_dims)


def widths(n_dims: Sequence[int]) -> str:
    """``n{n0}_{n1}...`` for a kernel's name (one width: ``n{n0}``, the single kernel's)."""
    return "n" + "_".join(str(n) for n in n_dims)
