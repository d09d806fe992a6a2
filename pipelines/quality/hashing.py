"""Normalised words and vectorised word / n-gram hashes, shared by MinHash dedup and n-gram decontamination.

Normalisation folds case, punctuation (any non-word character, Unicode included, and `_`) and whitespace: a text
becomes lower-case words separated by single spaces. Words and n-grams are then hashed with numpy only, no Python
loop per word: a polynomial prefix hash over the UTF-8 bytes gives every word's hash in O(1) array operations, a
second polynomial over the (splitmix64-finalised, hence uniform) word hashes gives every n-gram's hash.
All arithmetic is uint64 with wrap-around (numpy integer overflow wraps silently), so hashes are deterministic
across processes and machines (unlike Python's `hash`).
"""
from __future__ import annotations

import re

import numpy as np

_NON_WORD = re.compile(r"[\W_]+")
_U64 = np.uint64
_P_BYTE = _U64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2**64
_P_WORD = _U64(0xC2B2AE3D27D4EB4F)
_SPACE = 32


# ASCII fast path: one bytes.translate (A-Z -> a-z, every other non-alphanumeric byte -> space), then split/join.
_ASCII_FOLD = bytes(
    (c + 32 if 65 <= c <= 90 else c) if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 32
    for c in range(256))


def normalize_bytes(text: str) -> bytes:
    """UTF-8 of `normalize(text)`; about 2x faster than the regex on ASCII text."""
    if text.isascii():
        return b" ".join(text.encode("ascii").translate(_ASCII_FOLD).split())
    return _NON_WORD.sub(" ", text.lower()).strip().encode("utf-8")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces (punctuation, `_` and whitespace folded)."""
    if text.isascii():
        return normalize_bytes(text).decode("ascii")
    return _NON_WORD.sub(" ", text.lower()).strip()


def _inverse(a: np.uint64) -> np.uint64:
    return _U64(pow(int(a), -1, 1 << 64))


class _Powers:
    """Cached P**i and P**-i (mod 2**64) for i < n, grown on demand."""

    def __init__(self, base: np.uint64):
        self.base, self.inv = base, _inverse(base)
        self.pow = np.ones(1, _U64)
        self.ipow = np.ones(1, _U64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pow) < n:
            m = max(n, 2 * len(self.pow), 4096)
            with np.errstate(over="ignore"):
                self.pow = np.cumprod(np.concatenate([[_U64(1)], np.full(m - 1, self.base)]), dtype=_U64)
                self.ipow = np.cumprod(np.concatenate([[_U64(1)], np.full(m - 1, self.inv)]), dtype=_U64)
        return self.pow[:n], self.ipow[:n]


_BYTE_POW = _Powers(_P_BYTE)
_WORD_POW = _Powers(_P_WORD)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a fresh array): turns weak polynomial hashes into well-spread ones."""
    x = x ^ (x >> _U64(30))
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _spans(norm: str | bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.frombuffer(norm.encode("utf-8") if isinstance(norm, str) else norm, dtype=np.uint8)
    spaces = np.flatnonzero(b == _SPACE)
    return b, np.concatenate([[0], spaces + 1]), np.concatenate([spaces, [len(b)]])


def word_hashes_normalized(norm: str | bytes) -> np.ndarray:
    """uint64 hash of every word of an already-normalised text (words separated by single spaces)."""
    if not norm:
        return np.zeros(0, _U64)
    return _hash_spans(*_spans(norm))


def _hash_spans(b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    n = len(b)
    pw, ipw = _BYTE_POW.get(n + 1)
    prefix = np.empty(n + 1, _U64)
    prefix[0] = 0
    np.cumsum((b.astype(_U64) + _U64(1)) * pw[:n], out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * ipw[starts]  # sum of bytes * P**(offset inside the word)
    return mix64(h)


# single-letter words a-h: what multiple-choice labels ("A)", "(b)", "C.") become after normalisation
_LABEL_BYTES = np.zeros(256, bool)
_LABEL_BYTES[list(b"abcdefgh")] = True


def words_and_labels(norm: str | bytes) -> tuple[np.ndarray, np.ndarray]:
    """(word hashes, label letter per word: the byte of a single-letter a-h word, else 0) of a normalised text."""
    if not norm:
        return np.zeros(0, _U64), np.zeros(0, np.uint8)
    b, starts, ends = _spans(norm)
    first = b[starts]
    return _hash_spans(b, starts, ends), np.where(((ends - starts) == 1) & _LABEL_BYTES[first], first, 0).astype(np.uint8)


_SALT = _U64(0x2545F4914F6CDD1D)


def _length_salt(n: int) -> np.uint64:
    return _U64(n * 0x2545F4914F6CDD1D & 0xFFFFFFFFFFFFFFFF)


def length_salts(n: np.ndarray) -> np.ndarray:
    """`_length_salt` for an array of lengths."""
    with np.errstate(over="ignore"):
        return n.astype(_U64) * _SALT


def ngram_ipow(n: int) -> np.ndarray:
    """P**-i for i < n (the word-level base), to hash n-grams of varying lengths at chosen positions."""
    return _WORD_POW.get(n)[1]


def ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """Hash of every contiguous n-gram of the word-hash sequence `wh` (length max(0, len(wh) - n + 1))."""
    m = len(wh) - n + 1
    if m <= 0:
        return np.zeros(0, _U64)
    pw, ipw = _WORD_POW.get(len(wh) + 1)
    prefix = np.empty(len(wh) + 1, _U64)
    prefix[0] = 0
    np.cumsum(wh * pw[: len(wh)], out=prefix[1:])
    return (prefix[n:] - prefix[:m]) * ipw[:m] + _length_salt(n)


def sequence_hash(wh: np.ndarray) -> int:
    """Hash of the whole word sequence, equal to `ngram_hashes(wh, len(wh))[0]`."""
    return int(ngram_hashes(wh, len(wh))[0])


def ngram_prefix(wh: np.ndarray) -> np.ndarray:
    """Prefix sums of wh[i] * P**i (without the leading 0) for `hashes_at`."""
    pw, _ = _WORD_POW.get(len(wh) + 1)
    return np.cumsum(wh * pw[: len(wh)], dtype=_U64)


def hashes_at(prefix0: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """`ngram_hashes(wh, n)[starts]` from `[0] + ngram_prefix(wh)`, for chosen start positions only."""
    _, ipw = _WORD_POW.get(len(prefix0))
    return (prefix0[starts + n] - prefix0[starts]) * ipw[starts] + _length_salt(n)
