"""GPTQ (Frantar et al., ICLR 2023): column-wise quantization with inverse-Hessian error feedback.

With ``act_order``, columns are processed by decreasing Hessian diagonal; group scales are then
computed up front from the original contiguous groups ("static groups"), so the stored layout is
the plain contiguous-group one every backend reads (no column permutation index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.base import PassOptionError
from llmc.passes.calibration import InputStats
from llmc.passes.quant_common import QuantBase, dequant_cols, find_params, quantize_cols
from llmc.passes.sparsegpt import inverse_hessian_chol


@dataclass(frozen=True)
class GPTQQuant(QuantBase):
    """GPTQ weight-only quantization with Hessian error compensation (W4A16 by default)."""

    name = "gptq"
    method = "gptq"
    needs_calibration = True
    needs_hessian = True
    act_order: bool = False
    blocksize: int = 128
    damp: float = 0.01

    def check(self) -> None:
        super().check()
        if self.blocksize < 1:
            raise PassOptionError(f"blocksize must be >= 1, got {self.blocksize}")
        if not 0 < self.damp < 1:
            raise PassOptionError(f"damp must be in (0, 1), got {self.damp}")

    def quantize(
        self, w: torch.Tensor, group: int, stats: InputStats | None, keep: torch.Tensor | None
    ):
        assert stats is not None
        bits, sym = self.bits, self.sym
        rows, cols = w.shape
        g = cols if group == 0 else group
        W = w.to(torch.float64, copy=True)  # (a clone first held one more float32 copy)
        # float32 until inverse_hessian_chol (its one float64 buffer): a float64 copy here
        # would be one more d x d float64 matrix held through the factorization
        H = stats.H()
        dead = torch.diag(H) == 0
        W[:, dead] = 0
        # group parameters: static (from the original weights) under act-order, else found
        # at each group's first column from the error-updated weights, as in the paper's code
        static = self.act_order or group == 0
        n_groups = cols // g
        scales = torch.zeros(rows, n_groups, dtype=torch.float64)
        zeros = None if sym else torch.zeros(rows, n_groups, dtype=torch.float64)
        if static:
            for gi in range(n_groups):
                s, z = find_params(W[:, gi * g : (gi + 1) * g], bits, sym, self.scale_dtype)
                scales[:, gi] = s[:, 0]
                if zeros is not None and z is not None:
                    zeros[:, gi] = z[:, 0]
        perm = torch.arange(cols)
        if self.act_order:
            perm = torch.argsort(torch.diag(H).to(torch.float64), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
        keep_p = keep[:, perm] if keep is not None else None
        hinv, _ = inverse_hessian_chol(H, self.damp)
        del H
        # int8 codes (store_quantized's dtype; every column is written below): a float64 Q
        # held one more float64 copy of the weight through GPTQ and the output error
        # measurement (0.36 GB for Llama-2-7B's down projection)
        Q = torch.empty(W.shape, dtype=torch.int8)
        bs = self.blocksize
        for i1 in range(0, cols, bs):
            i2 = min(i1 + bs, cols)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                orig = int(perm[col])
                gi = orig // g
                if not static and orig % g == 0:
                    s, z = find_params(
                        W1[:, i : i + g]
                        if i + g <= i2 - i1
                        else torch.cat([W1[:, i:], W[:, i2 : col + g]], dim=1),
                        bits,
                        sym,
                        self.scale_dtype,
                    )
                    scales[:, gi] = s[:, 0]
                    if zeros is not None and z is not None:
                        zeros[:, gi] = z[:, 0]
                s = scales[:, gi : gi + 1]
                z = zeros[:, gi : gi + 1] if zeros is not None else None
                w_col = W1[:, i : i + 1]
                q = quantize_cols(w_col, s, z, bits, sym)
                if keep_p is not None:
                    zc = z if z is not None else torch.zeros_like(q)
                    q = torch.where(keep_p[:, col : col + 1], q, zc)
                deq = dequant_cols(q, s, z)
                Q1[:, i] = q[:, 0]
                d = Hinv1[i, i]
                err1 = (w_col[:, 0] - deq[:, 0]) / d
                W1[:, i:].addr_(err1, Hinv1[i, i:], alpha=-1.0)  # rank-1 update
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1.to(torch.int8)  # exact: Q1 holds integer codes in int8's range
            # in place (BLAS writes into the view): ``W[:, i2:] -= Err1 @ ...`` made a float64
            # temporary of nearly the whole weight's size at the first block
            W[:, i2:].addmm_(Err1, hinv[i1:i2, i2:], alpha=-1.0)
        if self.act_order:
            inv = torch.argsort(perm)
            Q = Q[:, inv]
        return Q, scales.to(torch.float32), zeros
