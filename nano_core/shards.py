"""One token shard on disk: llm.c's format, so shards move between nano, llm.c and modded-nanogpt unchanged.

    header: 256 x int32, little-endian (1024 bytes)
        [0] magic    20240520
        [1] version  1 -> tokens are uint16 (vocabularies up to 65,536 ids: 0..65535)
                     2 -> tokens are uint32 (our variant for bigger vocabularies)
        [2] number of tokens that follow
        [3..255] zero
    tokens: little-endian uint16 or uint32, nothing after them.

llm.c itself writes its 32-bit variant (Llama-3 tokens) with a different magic, 20240801, and version 7; we read
that header too, so `read_shard` accepts (20240520, 1), (20240520, 2) and (20240801, 7). We write version 2 under
the usual magic so that one magic number identifies every nano shard.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nano_io.files import atomic_path

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype. The last entry is llm.c's Llama-3 header, read but never written.
HEADER_DTYPES = {
    (MAGIC, 1): np.dtype("<u2"),
    (MAGIC, 2): np.dtype("<u4"),
    (20240801, 7): np.dtype("<u4"),
}
VERSION_OF_DTYPE = {"uint16": 1, "uint32": 2}
UINT16_MAX_VOCAB = 1 << 16  # ids 0..65535 fit in uint16


def shard_dtype(vocab_size: int) -> str:
    """The narrowest token dtype for a vocabulary: uint16 up to 65,536 ids, uint32 above."""
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


def write_shard(path, tokens, dtype: str | None = None) -> Path:
    """Write `tokens` as one shard at `path`, atomically (nano_io.files.atomic_path: temp file, fsync, rename).

    dtype "uint16"/"uint32" picks the header version; None picks the narrowest that holds max(tokens).
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"write_shard({path.name}): tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0):
        raise ValueError(f"write_shard({path.name}): negative token id {int(tokens.min())}")
    top = int(tokens.max()) if tokens.size else 0
    dtype = dtype or shard_dtype(top + 1)
    if dtype not in VERSION_OF_DTYPE:
        raise ValueError(f"write_shard({path.name}): dtype must be uint16 or uint32, got {dtype!r}")
    if top >= np.iinfo(dtype).max + 1:
        raise ValueError(f"write_shard({path.name}): token id {top} does not fit {dtype}; use dtype='uint32'")
    if tokens.size >= 2**31:
        raise ValueError(f"write_shard({path.name}): {tokens.size} tokens overflow the int32 count; split the shard")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION_OF_DTYPE[dtype], tokens.size
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(f"<{np.dtype(dtype).str[1:]}", copy=False).tobytes())
    return path


def read_header(path) -> tuple[np.dtype, int]:
    """Validate the header and the file size of a shard; return (token dtype, token count). One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is shorter than the 1024-byte shard header (truncated or not a shard)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic not in {m for m, _ in HEADER_DTYPES}:
        raise ValueError(f"{path}: bad magic {magic} (expected {MAGIC}): not an llm.c/nano token shard")
    dtype = HEADER_DTYPES.get((magic, version))
    if dtype is None:
        known = ", ".join(f"{v}" for m, v in HEADER_DTYPES if m == magic)
        raise ValueError(f"{path}: unsupported shard version {version} (known for magic {magic}: {known})")
    expected = HEADER_BYTES + count * dtype.itemsize
    if count < 0 or size != expected:
        raise ValueError(f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes "
                         f"({'truncated' if size < expected else 'trailing bytes'}); re-run prepare")
    return dtype, count


def read_shard(path) -> np.memmap:
    """Memory-map a shard's tokens (uint16 or uint32, read-only) after validating its header."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses a zero-length map
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# max token id per shard, computed once per (file, size, mtime) in this process: a full scan is cheap but not free
_MAX_ID_CACHE: dict[tuple, int] = {}


def shard_max_id(path, tokens=None) -> int:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MAX_ID_CACHE:
        tokens = read_shard(path) if tokens is None else tokens
        _MAX_ID_CACHE[key] = int(tokens.max()) if len(tokens) else -1
    return _MAX_ID_CACHE[key]
