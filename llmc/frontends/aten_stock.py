"""ATen handlers that stock (non-LM) modules need: patch-embedding ``conv2d``, ``gather`` from a
constant, advanced indexing with constant indices, boolean ``and``, ``cumsum``.

Registered into :data:`llmc.frontends.aten_handlers.HANDLERS` on import (the end of that module
imports this one); see docs/frontend.md, "Stock encoders and other non-LM modules".
"""

from __future__ import annotations

import torch

from llmc.frontends.aten_handlers import _out_dtype, _out_type, aten, handles
from llmc.frontends.fx_convert import Converter


@handles(aten.conv2d.default)
def _conv2d(c: Converter, n, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """A non-overlapping patch embedding (ViT: stride == kernel, no padding) as
    patches -> ``linear`` -> image layout; other convolutions are refused."""
    xv = c.value(x)
    wt = w.meta["val"]
    o, ch, kh, kw = (int(s) for s in wt.shape)
    pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    bsz, _, h, wd = xv.type.shape
    if (
        pair(stride) != (kh, kw)
        or any(pair(padding))
        or pair(dilation) != (1, 1)
        or groups != 1
        or not (isinstance(h, int) and isinstance(wd, int) and h % kh == 0 and wd % kw == 0)
    ):
        raise c.unsupported(
            "conv2d other than a non-overlapping patch embedding (stride == kernel, no padding, "
            "fixed image size)"
        )
    hp, wp = h // kh, wd // kw
    src = c.params.get(w) if isinstance(w, torch.fx.Node) else None
    if src is not None:
        flat = type(src)(src.name, src.tensor.reshape(o, ch * kh * kw).clone())
        wv = c.param_value(flat)
    else:
        wv = c.emit("reshape", c.value(w), shape=(o, ch * kh * kw))
    v = c.emit("reshape", xv, shape=(bsz, ch, hp, kh, wp, kw))
    v = c.emit("permute", v, perm=(0, 2, 4, 1, 3, 5))
    v = c.emit("reshape", v, shape=(bsz, hp * wp, ch * kh * kw))
    v = c.emit("linear", v, wv, *([c.value(b)] if b is not None else []))
    v = c.emit("reshape", v, shape=(bsz, hp, wp, o))
    return c.emit("permute", v, perm=(0, 3, 1, 2))


@handles(aten.gather.default)
def _gather(c: Converter, n, x, dim, index, *, sparse_grad=False):
    """Only a gather from a constant tensor that holds one value (RoBERTa's all-zero
    ``token_type_ids`` buffer indexed by computed positions): the result is that value."""
    t = c.folded(x)
    if t is None or t.numel() == 0 or not bool((t == t.flatten()[0]).all()):
        raise c.unsupported("gather (llmc maps only a gather from a constant, uniform tensor)")
    val = n.meta["val"]
    return c.folded_value(n, torch.full(tuple(val.shape), t.flatten()[0].item(), dtype=t.dtype))


@handles(aten.index.Tensor)
def _index(c: Converter, n, x, indices):
    """Advanced indexing with constant index tensors (BERT's mask expansion
    ``mask[batch_idx, kv_idx]``): flatten, ``index_select`` the folded flat positions, reshape."""
    v = c.value(x)
    shape = v.type.shape
    idx = [None if i is None else c.folded(i) for i in indices]
    if (
        any(t is None for t in idx)
        or len(idx) != len(shape)
        or not all(isinstance(d, int) for d in shape)
    ):
        raise c.unsupported("index with computed or partial indices (llmc maps constant ones)")
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * int(shape[d + 1])
    flat_idx = sum(t.long() % int(s) * st for t, s, st in zip(idx, shape, strides, strict=True))
    out = _out_type(c)
    flat = c.emit("reshape", v, shape=(-1,))
    sel = c.emit("index_select", flat, c.folded_value(n, flat_idx.reshape(-1)), dim=0)
    return c.emit("reshape", sel, shape=out.shape)


@handles(aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default)
def _and(c: Converter, n, a, b):
    """Boolean and as ``where(a, b, False)``."""
    x, y = c.value(a), c.value(b)
    if x.type.dtype != "bool" or y.type.dtype != "bool":
        raise c.unsupported("bitwise and of integers (llmc maps boolean and)")
    return c.emit("where", x, y, c.const(False, "bool"))


@handles(aten.cumsum.default)
def _cumsum(c: Converter, n, x, dim, *, dtype=None):
    v = c.cast(c.value(x), _out_dtype(c))
    return c.emit("cumsum", v, dim=int(dim) % max(v.type.rank, 1))
