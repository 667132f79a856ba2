"""SparseGPT (Frantar & Alistarh, ICML 2023): OBS-style pruning with a Hessian weight update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.base import PassOptionError
from llmc.passes.calibration import InputStats
from llmc.passes.prune_common import PruneBase


def inverse_hessian_chol(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + λI)^-1`` (λ = damp * mean diag), and the dead-column mask
    (channels that never fired get diagonal 1 and are zeroed, as in the reference code)."""
    h = h.clone().to(torch.float64)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    lam = damp * torch.mean(torch.diag(h))
    idx = torch.arange(h.shape[0])
    for scale in (1.0, 10.0, 100.0, 1000.0):  # escalate damping if H is numerically singular
        try:
            hh = h.clone()
            hh[idx, idx] += lam * scale
            L = torch.linalg.cholesky(hh)
            hinv = torch.cholesky_inverse(L)
            return torch.linalg.cholesky(hinv, upper=True), dead
        except torch.linalg.LinAlgError:
            continue
    raise PassOptionError("the calibration Hessian is not positive definite even with damping")


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
