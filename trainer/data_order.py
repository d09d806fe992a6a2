"""The epoch order of the trainer's units: a keyed pseudo-random bijection of [0, n), computed, never stored.

Why a stateless permutation (a Feistel network with cycle-walking) rather than a permutation array:
  * memory and start-up are O(1) whatever the build's size — a materialised permutation of 1B units is 8 GB per rank,
    and even one written once to disk by rank 0 needs a shared filesystem, a barrier and O(n) time per epoch;
  * every rank computes the same order from (seed, epoch) alone, with no coordination and no file to go stale;
  * position p of epoch e is `perm(p)` in O(rounds) work, so resuming at any cursor is O(1) too.

A balanced Feistel network over 2·h bits is a bijection of [0, 4^h) for any round function; cycle-walking (apply it
again while the value is ≥ n) restricts it to a bijection of [0, n). With 4^h < 4n, fewer than 4 applications are
needed on average. Rounds use the splitmix64 finaliser, keyed per (seed, epoch, round); six rounds are far more
than shuffling training data needs (Luby-Rackoff: 4 rounds of a pseudo-random function give a pseudo-random
permutation).
"""
from __future__ import annotations

import numpy as np

ROUNDS = 6
_M64 = (1 << 64) - 1


def _splitmix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class UnitPermutation:
    """perm(positions) -> units: the epoch-`epoch` order of [0, n) for `seed`, identical on every machine."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        if n < 1:
            raise ValueError(f"cannot permute {n} units")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        base = _splitmix64_int(_splitmix64_int(seed & _M64) ^ (epoch & _M64))
        self.keys = [np.uint64(_splitmix64_int(base + r)) for r in range(ROUNDS)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_splitmix64(right ^ key) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n):
            raise IndexError(f"positions outside [0, {self.n})")
        out = self._feistel(positions.astype(np.uint64))
        walk = out >= np.uint64(self.n)
        while walk.any():  # cycle-walking: terminates because the Feistel map is a permutation of [0, 4^h)
            out[walk] = self._feistel(out[walk])
            walk = out >= np.uint64(self.n)
        return out.astype(np.int64)
