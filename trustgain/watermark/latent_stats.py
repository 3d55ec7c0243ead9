"""Exact null distributions of the latent mark's detection statistics.

Under the null (an unmarked image, or the wrong key) each decrypted sign is a fair coin,
independent of every other sign and of the magnitudes ``|z|``, because the ChaCha20 keystream
is independent of the image. So, conditionally on integer weights computed from the magnitudes
alone, both statistics below have exact, enumerable null laws (sums of independent small
integer variables, convolved with numpy):

- ``weighted matches`` ``S = sum_i w_i [d_i = e_i]`` against known expected bits ``e``:
  ``S ~ sum_l l * Binomial(c_l, 1/2)`` (``c_l`` elements of weight ``l``); with all weights 1
  this is the plain ``Binomial(n, 1/2)`` of Gaussian Shading.
- ``weighted fold`` ``T = sum_j max(A_j, W_j - A_j)`` with ``A_j = sum_{i in bit j} w_i d_i``
  and ``W_j`` the total weight of bit ``j``'s copies: matches against the weighted-majority
  payload, for when the payload is unknown.

Weights are ranks of ``|z|`` cut into ``levels`` equal bins (1 = least reliable); ``levels=1``
gives the unweighted tests. scipy has no routine for these laws (``binom`` covers only the
unweighted known-payload case), hence the convolutions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import binom


def rank_weights(magnitudes: np.ndarray, valid: np.ndarray, levels: int) -> np.ndarray:
    """Integer weights 1..``levels`` by rank of ``magnitudes`` among the valid elements; 0 else."""
    weights = np.zeros(magnitudes.shape, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if len(idx):
        ranks = np.argsort(np.argsort(magnitudes[idx], kind="stable"), kind="stable")
        weights[idx] = 1 + (ranks * levels) // len(idx)
    return weights


def _sf(pmf: np.ndarray) -> np.ndarray:
    """``sf[t] = P(X >= t)``, summed from the top so tiny tails keep their precision."""
    return np.minimum(np.cumsum(pmf[::-1])[::-1], 1.0)


@lru_cache(maxsize=256)
def _matches_sf(counts: tuple[int, ...]) -> np.ndarray:
    pmf = np.array([1.0])
    for level, count in enumerate(counts, start=1):
        spread = np.zeros(level * count + 1)
        spread[::level] = binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, spread)
    out = _sf(pmf)
    out.setflags(write=False)
    return out


def matches_sf(weights: np.ndarray) -> np.ndarray:
    """Null survival function of the weighted matches ``S`` for these weights."""
    w = weights[weights > 0]
    top = int(w.max(initial=0))
    return _matches_sf(tuple(int((w == level).sum()) for level in range(1, top + 1)))


@lru_cache(maxsize=4096)
def _group_fold_pmf(group: tuple[int, ...]) -> np.ndarray:
    """pmf of ``max(A, W - A)``, ``A = sum_i w_i B_i``, for one bit's copies."""
    a = np.array([1.0])
    for w in group:
        nxt = np.zeros(len(a) + w)
        nxt[: len(a)] += 0.5 * a
        nxt[w:] += 0.5 * a
        a = nxt
    total = len(a) - 1
    folded = np.zeros(total + 1)
    np.add.at(folded, np.maximum(np.arange(total + 1), total - np.arange(total + 1)), a)
    return folded


def fold_sf(weights: np.ndarray, bit_of: np.ndarray, payload_bits: int) -> np.ndarray:
    """Null survival function of the weighted fold statistic ``T`` for these weights."""
    pmf = np.array([1.0])
    for j in range(payload_bits):
        group = weights[(bit_of == j) & (weights > 0)]
        pmf = np.convolve(pmf, _group_fold_pmf(tuple(sorted(int(w) for w in group))))
    return _sf(pmf)


def sidak(p: float, tries: int) -> float:
    """Best of ``tries`` independent p-values, corrected: ``1 - (1 - p) ** tries``."""
    return float(-np.expm1(tries * np.log1p(-min(p, 1.0 - 1e-17)))) if p < 1.0 else 1.0
