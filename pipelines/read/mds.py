"""MDS (Mosaic Data Shard) reading and writing, implemented over the format that `mosaicml-streaming` documents.

Why not the package itself: `mosaicml-streaming` 0.13 pins numpy<2.2 and transformers<5 and pulls in cloud SDKs
(azure, gcs, oci) and torchvision, which would downgrade this project's environment. The format is small and
stable (version 2), so it is read here directly; `tests/test_mds_inputs.py` cross-checks against `MDSWriter`
whenever `streaming` is importable.

Layout: a directory with `index.json` (`{"version": 2, "shards": [...]}`) and shard files; every shard entry names
its `column_names` (sorted), `column_encodings`, `column_sizes` (bytes, or null when variable) and `raw_data.basename`
(or `zip_data.basename` with `compression`, e.g. `zstd`). A shard file is `uint32 n`, `uint32 offsets[n + 1]`
(absolute byte offsets of the samples), then the samples; a sample is one `uint32` size per variable-size column,
then the column values in `column_names` order.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from pipelines.errors import SourceFileError

_SCALARS = {n: n for n in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                           "float16", "float32", "float64")}
_NDARRAY_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
                   34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_DTYPE_CODES = {v: k for k, v in _NDARRAY_DTYPES.items()}
_SHAPE_DTYPES = {0: "uint8", 1: "uint16", 2: "uint32", 3: "uint64"}


class MDSError(SourceFileError):
    """An MDS directory or shard cannot be read; the message names the file."""


def decode_value(encoding: str, data: bytes) -> Any:
    """One column value; unsafe (`pkl`) and image encodings are refused."""
    kind, _, arg = encoding.partition(":")
    if kind == "str":
        return data.decode("utf-8")
    if kind == "bytes":
        return bytes(data)
    if kind == "int":
        return int(np.frombuffer(data, np.int64)[0])
    if kind in _SCALARS:
        return np.frombuffer(data, kind)[0].item()
    if kind == "json":
        return json.loads(data.decode("utf-8"))
    if kind == "ndarray":
        dtype, _, shape_s = arg.partition(":")
        pos = 0
        if not dtype:
            dtype = _NDARRAY_DTYPES[data[0]]
            pos = 1
        if shape_s:
            shape = tuple(int(x) for x in shape_s.split(","))
        else:
            byte = data[pos]
            ndim, shape_dtype = byte >> 2, np.dtype(_SHAPE_DTYPES[byte & 3])
            pos += 1
            shape = tuple(int(x) for x in np.frombuffer(data, shape_dtype, ndim, pos))
            pos += ndim * shape_dtype.itemsize
        return np.frombuffer(data, dtype, int(np.prod(shape)), pos).reshape(shape)
    raise ValueError(f"MDS encoding {encoding!r} is not supported (supported: str, bytes, int, json, scalars, ndarray)")


def encode_value(encoding: str, value: Any) -> bytes:
    kind, _, arg = encoding.partition(":")
    if kind == "str":
        return value.encode("utf-8")
    if kind == "bytes":
        return bytes(value)
    if kind == "int":
        return np.int64(value).tobytes()
    if kind in _SCALARS:
        return np.array(value, dtype=kind).tobytes()
    if kind == "json":
        return json.dumps(value, sort_keys=True).encode("utf-8")
    if kind == "ndarray":
        arr = np.asarray(value)
        dtype, _, shape_s = arg.partition(":")
        head = b"" if dtype else bytes([_DTYPE_CODES[arr.dtype.name]])
        if dtype and arr.dtype.name != dtype:
            raise ValueError(f"expected dtype {dtype}, got {arr.dtype.name}")
        if not shape_s:
            shape = np.array(arr.shape, np.int64)
            code = next(c for c, d in _SHAPE_DTYPES.items() if int(shape.max()) <= int(np.iinfo(d).max))
            head += bytes([(arr.ndim << 2) | code]) + shape.astype(_SHAPE_DTYPES[code]).tobytes()
        return head + arr.tobytes()
    raise ValueError(f"MDS encoding {encoding!r} is not supported")


def _static_size(encoding: str) -> int | None:
    kind, _, arg = encoding.partition(":")
    if kind == "int":
        return 8
    if kind in _SCALARS:
        return np.dtype(kind).itemsize
    if kind == "ndarray":
        dtype, _, shape_s = arg.partition(":")
        if dtype and shape_s:
            return int(np.prod([int(x) for x in shape_s.split(",")])) * np.dtype(dtype).itemsize
    return None


@dataclass(frozen=True)
class ShardInfo:
    path: str  # the raw shard file (or the compressed one)
    compression: str | None
    n_samples: int
    names: tuple[str, ...]
    encodings: tuple[str, ...]
    sizes: tuple[int | None, ...]


def read_index(index_path: str) -> list[ShardInfo]:
    """The shards of the MDS directory holding `index_path`."""
    base = index_path.rsplit("/", 1)[0] if "/" in index_path else "."
    try:
        with fsspec.open(index_path, "rt", encoding="utf-8") as f:
            index = json.load(f)
        shards = []
        for sh in index["shards"]:
            if sh.get("format", "mds") != "mds":
                raise MDSError(f"{index_path}: shard format {sh.get('format')!r} is not MDS")
            comp = sh.get("compression")
            entry = sh["zip_data"] if comp else sh["raw_data"]
            shards.append(ShardInfo(f"{base}/{entry['basename']}", comp, int(sh["samples"]), tuple(sh["column_names"]),
                                    tuple(sh["column_encodings"]), tuple(sh["column_sizes"])))
        return shards
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise MDSError(f"{index_path}: not an MDS index ({type(e).__name__}: {e})") from e


def _shard_bytes(info: ShardInfo) -> bytes:
    with fsspec.open(info.path, "rb") as f:
        data = f.read()
    if info.compression:
        algo = info.compression.split(":")[0]
        if algo != "zstd":
            raise MDSError(f"{info.path}: compression {info.compression!r} not supported (zstd only)")
        import zstandard

        data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 34)
    return data


def iter_samples(index_path: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(shard basename, sample index in shard, sample dict) for every sample, in index order."""
    for info in read_index(index_path):
        data = _shard_bytes(info)  # one shard at a time: MDS shards are size-limited (64 MB by default)
        n = int(np.frombuffer(data, np.uint32, 1)[0])
        if n != info.n_samples:
            raise MDSError(f"{info.path}: holds {n} samples, index.json says {info.n_samples}")
        offsets = np.frombuffer(data, np.uint32, n + 1, 4).astype(np.int64)
        n_var = sum(1 for s in info.sizes if s is None)
        for i in range(n):
            raw = data[offsets[i]:offsets[i + 1]]
            var = iter(np.frombuffer(raw, np.uint32, n_var).tolist())
            pos, sample = 4 * n_var, {}
            for name, enc, size in zip(info.names, info.encodings, info.sizes):
                size = size if size is not None else next(var)
                sample[name] = decode_value(enc, raw[pos:pos + size])
                pos += size
            yield os.path.basename(info.path), i, sample


def write_mds(out_dir: str, columns: dict[str, str], samples: list[dict[str, Any]], shard_samples: int = 1000) -> None:
    """Write samples as an uncompressed MDS directory (the byte layout `MDSWriter` produces, without its hashes)."""
    os.makedirs(out_dir, exist_ok=True)
    names = sorted(columns)
    encodings = [columns[n] for n in names]
    sizes = [_static_size(e) for e in encodings]
    shards = []
    for k in range(0, max(len(samples), 1), shard_samples):
        chunk = samples[k:k + shard_samples]
        encoded = []
        for s in chunk:
            vals = [encode_value(e, s[n]) for n, e in zip(names, encodings)]
            head = np.array([len(v) for v, sz in zip(vals, sizes) if sz is None], np.uint32).tobytes()
            encoded.append(head + b"".join(vals))
        offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.uint32) + 4 + 4 * (len(encoded) + 1)
        body = np.uint32(len(encoded)).tobytes() + offsets.tobytes() + b"".join(encoded)
        basename = f"shard.{len(shards):05d}.mds"
        with open(os.path.join(out_dir, basename + ".tmp"), "wb") as f:
            f.write(body)
        os.replace(os.path.join(out_dir, basename + ".tmp"), os.path.join(out_dir, basename))
        shards.append({"column_encodings": encodings, "column_names": names, "column_sizes": sizes,
                       "compression": None, "format": "mds", "hashes": [],
                       "raw_data": {"basename": basename, "bytes": len(body), "hashes": {}},
                       "samples": len(encoded), "size_limit": None, "version": 2, "zip_data": None})
    tmp = os.path.join(out_dir, "index.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"shards": shards, "version": 2}, f, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, "index.json"))
