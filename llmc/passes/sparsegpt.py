"""SparseGPT (Frantar & Alistarh, ICML 2023): OBS-style pruning with a Hessian weight update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.base import PassOptionError
from llmc.passes.calibration import InputStats
from llmc.passes.prune_common import PruneBase


def inverse_hessian_chol(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + λI)^-1`` (λ = damp * mean diag), and the dead-column mask
    (channels that never fired get diagonal 1 and are zeroed, as in the reference code).

    ``h`` (any float dtype; float32 from :meth:`InputStats.H`) is not changed. Memory: one
    ``d x d`` float64 matrix besides ``h``. It is kept in column-major order, LAPACK's, so that
    potrf / potri overwrite it in place (given a row-major matrix, torch factors a column-major
    copy), and transposed in place at the end. The bits are those of the chain of separate
    outputs this replaced, which held five such matrices at once (4.8 GB for a 7B model's
    11008-wide down projection).
    """
    dead = torch.diag(h) == 0
    d = int(h.shape[0])
    buf = torch.empty(d, d, dtype=torch.float64).t()  # column-major
    info = torch.empty(0, dtype=torch.int32)
    for scale in (1.0, 10.0, 100.0, 1000.0):  # escalate damping if H is numerically singular
        buf.copy_(h)  # each try from h: a failed factorization leaves a partial factor
        diag = buf.diagonal()
        diag[dead] = 1.0
        lam = damp * torch.mean(torch.diag(buf))
        diag += lam * scale
        torch.linalg.cholesky_ex(buf, out=(buf, info))
        if int(info) != 0:
            continue
        torch.cholesky_inverse(buf, out=buf)
        torch.linalg.cholesky_ex(buf, upper=True, out=(buf, info))
        if int(info) == 0:
            return _to_row_major(buf), dead
    raise PassOptionError("the calibration Hessian is not positive definite even with damping")


def _to_row_major(a: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The column-major square ``a`` as a row-major tensor of the same values, in the same
    memory (transposed in place, a pair of blocks at a time)."""
    t = a.t()  # row-major, holds aᵀ: swap it into a
    n = int(t.shape[0])
    for i in range(0, n, block):
        d = t[i : i + block, i : i + block]
        d.copy_(d.t().clone())
        for j in range(i + block, n, block):
            up = t[i : i + block, j : j + block].clone()
            t[i : i + block, j : j + block] = t[j : j + block, i : i + block].t()
            t[j : j + block, i : i + block] = up.t()
    assert t.is_contiguous()
    return t


@dataclass(frozen=True)
class SparseGPTPrune(PruneBase):
    """Prune with an OBS weight update from the layer Hessian XᵀX (mask chosen per block)."""

    name = "sparsegpt"
    needs_calibration = True
    needs_hessian = True
    blocksize: int = 128
    damp: float = 0.01

    def check(self) -> None:
        super().check()
        if self.blocksize < 1:
            raise PassOptionError(f"blocksize must be >= 1, got {self.blocksize}")
        if not 0 < self.damp < 1:
            raise PassOptionError(f"damp must be in (0, 1), got {self.damp}")
        nm = self.nm
        if nm is not None and self.blocksize % nm[1]:
            raise PassOptionError(f"blocksize {self.blocksize} must be a multiple of M={nm[1]}")

    def prune(self, w: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        assert stats is not None
        W = w.clone().to(torch.float64)
        rows, cols = W.shape
        hinv, dead = inverse_hessian_chol(stats.H(), self.damp)
        W[:, dead] = 0
        nm = self.nm
        prune_n, m = (nm[1] - nm[0], nm[1]) if nm is not None else (0, 0)
        ratio = self.ratio
        bs = self.blocksize
        for i1 in range(0, cols, bs):
            i2 = min(i1 + bs, cols)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            if prune_n == 0:
                tmp = W1**2 / (d[None, :] ** 2)
                k = int(tmp.numel() * ratio)
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
                if k > 0:
                    thresh = torch.sort(tmp.flatten())[0][k - 1]
                    mask1 = tmp <= thresh
                    # ties at the threshold could prune more than k: keep the excess
                    excess = int(mask1.sum()) - k
                    if excess > 0:
                        tied = torch.nonzero((tmp == thresh) & mask1)
                        for r, c in tied[:excess].tolist():
                            mask1[r, c] = False
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(count):
                w_col = W1[:, i]
                dd = Hinv1[i, i]
                if prune_n != 0 and i % m == 0:
                    tmp = W1[:, i : i + m] ** 2 / (d[i : i + m][None, :] ** 2)
                    idx = torch.topk(tmp, prune_n, dim=1, largest=False).indices
                    mask1.scatter_(1, i + idx, True)
                q = torch.where(mask1[:, i], torch.zeros_like(w_col), w_col)
                Q1[:, i] = q
                err1 = (w_col - q) / dd
                W1[:, i:].addr_(err1, Hinv1[i, i:], alpha=-1.0)  # rank-1 update
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
        return W.to(torch.float32)
