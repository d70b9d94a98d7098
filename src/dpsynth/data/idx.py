"""Reader for the IDX format of (Fashion-)MNIST, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx_header(path: str | Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape an IDX file declares, checked against the file's size, without
    reading its records (gzip: the size comes from the gzip trailer)."""
    import struct

    path = Path(path)
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise ValueError(f"{path} is not an IDX file (bad magic number)")
            dims = f.read(4 * head[3])
        shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
        if len(dims) != 4 * head[3]:
            raise ValueError(f"{path}: truncated IDX header")
        if gz:
            with open(path, "rb") as f:
                f.seek(-4, 2)  # ISIZE: the uncompressed size modulo 2**32
                size = struct.unpack("<I", f.read(4))[0]
            modulus = 2**32
        else:
            size, modulus = path.stat().st_size, None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read as an IDX file: {exc}") from None
    dtype = np.dtype(_DTYPES[head[2]])
    expected = 4 + 4 * len(shape) + int(np.prod(shape)) * dtype.itemsize
    if (expected % modulus if modulus else expected) != size:
        raise ValueError(f"{path}: header says {shape}, but the file holds a different "
                         "amount of data (truncated or corrupt)")
    return dtype, shape


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file has "
                         f"{len(raw) - offset} bytes of data (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
