"""The one text-normalisation and n-gram hashing module: exact dedup, MinHash near-dedup, benchmark decontamination
and the synthetic-GSM8K leak check all import it, so they agree on what a "word" is.

Three named normalisations, from least to most folding (measured on the mirror: `bench/normalisation.py`):

* `fold_exact` — the exact-dedup key. Folds only what cannot change meaning: Unicode NFC (canonically equivalent
  encodings), case, runs of whitespace (one space; ends stripped). Digits, signs, operators, punctuation and code
  symbols all count, so `return a + b` and `return a - b` are different documents.
* `fold_tokens` — MinHash shingles. Like `fold_exact`, and the text is cut into tokens: words (runs of letters and
  digits) and symbol runs (runs of any other non-space character, `_` included). `x=-5` and `x = - 5` are the same
  tokens; `-5` and `5` are not. Whitespace only separates tokens.
* `fold_words` — decontamination 13-grams and the GSM8K leak check. NFC, case, and every non-alphanumeric character
  (punctuation, symbols, `_`, whitespace) becomes a word separator: lower-case letter/digit words. Benchmark items
  are found through reformatting ("A) ..." vs "(a) ..."), which is what a leak looks like; a false match costs one
  document, a missed one costs a contaminated evaluation.

Words, tokens and n-grams are hashed with numpy only, no Python loop per word: a polynomial prefix hash over the
UTF-8 bytes gives every word's hash in O(1) array operations, a second polynomial over the (splitmix64-finalised,
hence uniform) word hashes gives every n-gram's hash. All arithmetic is uint64 with wrap-around, so hashes are
deterministic across processes and machines (unlike Python's `hash`). A word hashes the same under `fold_tokens`
and `fold_words`.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
_P_BYTE = _U64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2**64
_P_WORD = _U64(0xC2B2AE3D27D4EB4F)
_SPACE = 32


# ------------------------------------------------------------------------------------------------- normalisations
def _nfc_lower(text: str) -> str:
    return unicodedata.normalize("NFC", text.lower())


def fold_exact(text: str) -> bytes:
    """UTF-8 of text with NFC, case and whitespace runs folded (ends stripped); nothing else changes."""
    if text.isascii():
        return b" ".join(text.encode("ascii").lower().split())
    return " ".join(_nfc_lower(text).split()).encode("utf-8")


_NON_WORD = re.compile(r"[\W_]+")
_TOKEN = re.compile(r"[^\W_]+|(?:[^\w\s]|_)+")


def _common_non_ascii() -> tuple[dict[int, str], dict[int, None], dict[int, str]]:
    """Translation tables for the non-ASCII whitespace and symbols of most web text (Latin-1 punctuation, general
    punctuation, currency, arrows, math operators...): (whitespace -> " ", symbol -> deleted, both -> " "). Only
    characters the regex paths treat the same way, that NFC and lower-casing leave alone, are listed."""
    ws, sym = {}, {}
    for lo, hi in ((0x80, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7), (0x2000, 0x2BFF), (0x3000, 0x303F), (0xFE30, 0xFE4F),
                   (0xFF01, 0xFF0F)):
        for cp in range(lo, hi + 1):
            c = chr(cp)
            if unicodedata.normalize("NFC", c) != c or c.lower() != c or unicodedata.combining(c):
                continue
            if re.fullmatch(r"\s", c):
                ws[cp] = " "
            elif re.fullmatch(r"[^\w\s]", c):
                sym[cp] = None
    return ws, sym, {**ws, **{cp: " " for cp in sym}}


_WS_TO_SPACE, _DELETE_SYMBOLS, _SEPARATORS_TO_SPACE = _common_non_ascii()


_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_LISTED_WS = frozenset(map(chr, _WS_TO_SPACE))
_LISTED = _LISTED_WS | frozenset(map(chr, _DELETE_SYMBOLS))
_LISTED_WS_CHAR = re.compile("[" + "".join(re.escape(c) for c in sorted(_LISTED_WS)) + "]")


def _as_bytes_with_symbols(text: str) -> bytes | None:
    """Lower-cased UTF-8 of a text whose non-ASCII characters are all listed whitespace (made " ") or symbols (kept:
    their bytes, all >= 0x80, are symbol bytes for `_BYTE_CLASS`); None for any other text. The non-ASCII
    characters are found by a regex scan (C speed; `str.translate` with a dict costs ~8x more on web text)."""
    found = set("".join(_NON_ASCII_RUN.findall(text)))
    if not found <= _LISTED:
        return None
    if found & _LISTED_WS:
        text = _LISTED_WS_CHAR.sub(" ", text)
    return text.lower().encode("utf-8")
# ASCII fast path: one bytes.translate (A-Z -> a-z, every other non-alphanumeric byte -> space), then split/join.
_ASCII_WORDS = bytes(
    (c + 32 if 65 <= c <= 90 else c) if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 32
    for c in range(256))


def fold_words(text: str) -> bytes:
    """UTF-8 of the lower-case letter/digit words of text, separated by single spaces (NFC; punctuation, symbols,
    `_` and whitespace are separators)."""
    if text.isascii():
        return b" ".join(text.encode("ascii").translate(_ASCII_WORDS).split())
    u = text.translate(_SEPARATORS_TO_SPACE)  # most non-ASCII web text: curly quotes, dashes, NBSP...
    if u.isascii():
        return b" ".join(u.encode("ascii").translate(_ASCII_WORDS).split())
    return " ".join(_NON_WORD.sub(" ", _nfc_lower(text)).split()).encode("utf-8")


# byte classes for the ASCII path of `fold_tokens`: 0 whitespace, 1 letter/digit, 2 anything else (symbols, `_`)
_BYTE_CLASS = np.full(256, 2, np.uint8)  # bytes >= 0x80 only occur here as parts of listed symbols
_BYTE_CLASS[list(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")] = 0
_BYTE_CLASS[list(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")] = 1


def fold_tokens(text: str) -> bytes:
    """UTF-8 of text's tokens separated by single spaces: lower-case words (letters/digits) and symbol runs (every
    other non-space character, `_` included), NFC. `a+b` -> `a + b`, `x = -5;` -> `x = - 5 ;`."""
    b = text.encode("ascii").lower() if text.isascii() else _as_bytes_with_symbols(text)
    if b is not None:
        starts, ends = _byte_token_spans(np.frombuffer(b, np.uint8))
        return b" ".join(b[s:e] for s, e in zip(starts.tolist(), ends.tolist()))
    return " ".join(_TOKEN.findall(_nfc_lower(text))).encode("utf-8")


def _byte_token_spans(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of one non-space byte class."""
    cls = _BYTE_CLASS[b]
    change = np.flatnonzero(cls[1:] != cls[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(b)]])
    starts, ends = bounds[:-1], bounds[1:]
    keep = cls[starts] != 0 if len(b) else np.zeros(0, bool)
    return starts[keep], ends[keep]


# ---------------------------------------------------------------------------------------------- hashing primitives
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
    """splitmix64 finaliser (on a fresh array): turns weak polynomial hashes into well-spread ones."""
    x = x ^ (x >> _U64(30))
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def hash_spans(b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 hash of the bytes b[s:e] of every span (the same bytes give the same hash wherever they are)."""
    n = len(b)
    pw, ipw = _BYTE_POW.get(n + 1)
    prefix = np.empty(n + 1, _U64)
    prefix[0] = 0
    np.cumsum((b.astype(_U64) + _U64(1)) * pw[:n], out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * ipw[starts]  # sum of bytes * P**(offset inside the word)
    return mix64(h)


def _space_spans(norm: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.frombuffer(norm, dtype=np.uint8)
    spaces = np.flatnonzero(b == _SPACE)
    return b, np.concatenate([[0], spaces + 1]), np.concatenate([spaces, [len(b)]])


def word_hashes(norm: str | bytes) -> np.ndarray:
    """uint64 hash of every space-separated word of an already-normalised text (`fold_words` / `fold_tokens`)."""
    if not norm:
        return np.zeros(0, _U64)
    return hash_spans(*_space_spans(norm.encode("utf-8") if isinstance(norm, str) else norm))


@dataclass(frozen=True)
class TokenBatch:
    """Every `fold_tokens` token of a batch of texts, in text order: its hash, its text's index, whether it is a
    word (letters/digits; else a symbol run) and, for a word, its label letter (the byte of a single-letter a-h
    word: what "A)", "(b)" become under `fold_words`, else 0). The word tokens are exactly the `fold_words` words."""

    texts: list[str]
    hashes: np.ndarray
    doc: np.ndarray
    is_word: np.ndarray
    label: np.ndarray

    def words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, text index, label letter) of the word tokens only: the `fold_words` stream."""
        w = self.is_word
        return self.hashes[w], self.doc[w], self.label[w]


def _slow_word_flags(folded: bytes) -> list[bool]:
    """Word flag of every token of a `fold_tokens` output (only for texts off the byte-class fast path)."""
    return [bool(_WORD_START.match(tok)) for tok in folded.decode("utf-8").split(" ")] if folded else []


_WORD_START = re.compile(r"[^\W_]")
_last: TokenBatch | None = None


def token_batch(texts: list[str]) -> TokenBatch:
    """`TokenBatch` of texts in one vectorised pass: ASCII texts (and texts whose non-ASCII characters are common
    symbols) are lower-cased and cut by byte class, others go through `fold_tokens`. The decontamination and dedup
    steps run back to back on the same batch of documents: the last result is reused when called again with the
    same text objects in the same order."""
    global _last
    if _last is not None and len(_last.texts) == len(texts) and all(a is b for a, b in zip(_last.texts, texts)):
        return _last
    parts: list[bytes] = []
    slow: list[int] = []  # texts already `fold_tokens`-ed: cut at spaces only
    for i, t in enumerate(texts):
        b = t.encode("ascii").lower() if t.isascii() else _as_bytes_with_symbols(t)
        if b is None:
            b = fold_tokens(t)
            slow.append(i)
        parts.append(b)
    lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
    buf = np.frombuffer(b"\n".join(parts), np.uint8)  # "\n" is whitespace: no token crosses two texts
    seg_start = np.cumsum(lengths + 1) - lengths - 1
    cls = _BYTE_CLASS[buf]
    if slow:
        in_slow = np.zeros(len(texts), bool)
        in_slow[slow] = True
        in_slow = np.repeat(in_slow, lengths + 1)[: len(buf)]
        cls[in_slow & (cls != 0)] = 1
    change = np.flatnonzero(cls[1:] != cls[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(buf)]])
    starts, ends = bounds[:-1], bounds[1:]
    keep = cls[starts] != 0 if len(buf) else np.zeros(len(starts), bool)
    starts, ends = starts[keep], ends[keep]
    doc = np.searchsorted(seg_start, starts, "right") - 1
    first = buf[starts]
    is_word = cls[starts] == 1
    if slow:  # byte classes say nothing there: ask the characters
        for i in slow:
            is_word[doc == i] = _slow_word_flags(parts[i])
    label = np.where(is_word & ((ends - starts) == 1) & _LABEL_BYTES[first], first, 0).astype(np.uint8)
    _last = TokenBatch(list(texts), hash_spans(buf, starts, ends), doc, is_word, label)
    return _last


def token_hashes_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every `fold_tokens` token of every text, text index of each token), in text order."""
    b = token_batch(texts)
    return b.hashes, b.doc


# single-letter words a-h: what multiple-choice labels ("A)", "(b)", "C.") become after `fold_words`
_LABEL_BYTES = np.zeros(256, bool)
_LABEL_BYTES[list(b"abcdefgh")] = True


def words_and_labels(norm: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(word hashes, label letter per word: the byte of a single-letter a-h word, else 0) of a `fold_words` text."""
    if not norm:
        return np.zeros(0, _U64), np.zeros(0, np.uint8)
    b, starts, ends = _space_spans(norm)
    first = b[starts]
    label = np.where(((ends - starts) == 1) & _LABEL_BYTES[first], first, 0).astype(np.uint8)
    return hash_spans(b, starts, ends), label


_SALT = _U64(0x2545F4914F6CDD1D)


def _length_salt(n: int) -> np.uint64:
    return _U64(n * 0x2545F4914F6CDD1D & 0xFFFFFFFFFFFFFFFF)


def length_salts(n: np.ndarray) -> np.ndarray:
    """The n-gram length salt (added to every n-gram hash) for an array of lengths."""
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


def hashes_at(prefix0: np.ndarray, starts: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """`ngram_hashes(wh, n)[starts]` from `[0] + ngram_prefix(wh)`, for chosen start positions only (`n` may be an
    array of lengths, one per start)."""
    _, ipw = _WORD_POW.get(len(prefix0))
    salt = _length_salt(n) if isinstance(n, int) else length_salts(n)
    return (prefix0[starts + n] - prefix0[starts]) * ipw[starts] + salt


def word_ngram_hashes(text: str, n: int) -> np.ndarray:
    """Hashes of the `fold_words` n-grams of a text (empty when it has fewer than n words)."""
    return ngram_hashes(word_hashes(fold_words(text)), n)


def batches_by_chars(docs, limit: int):
    """Group a document stream into lists of at least `limit` characters (the last one may be shorter, never empty):
    the batched text steps (dedup signatures, decontamination) vectorise over one such list at a time."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
