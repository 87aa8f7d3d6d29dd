"""Fashion-MNIST from the files Debian's ``dataset-fashion-mnist`` package installs.

No network: the four idx files are read from ``/usr/share/datasets/fashion-mnist/`` (or any
folder given as ``root``), gzipped (``train-images-idx3-ubyte.gz``, as distributed) or plain
(``train-images-idx3-ubyte``). Install them with::

    sudo apt-get install dataset-fashion-mnist

The idx format (LeCun et al.): a big-endian header of two zero bytes, a dtype code
(``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D``
float32, ``0x0E`` float64), the number of dimensions, then each dimension as a big-endian
uint32; then the data, row-major, big-endian. Every header is checked against the file's
length before the data is read, and every problem raises a ``ValueError`` naming the file.

Usage::

    from datasets import load_fashion_mnist          # with benchmarks/ on sys.path
    x_train, y_train = load_fashion_mnist(split="train")   # (60000, 28, 28), (60000,) uint8
    x_test, y_test = load_fashion_mnist(split="test")      # (10000, 28, 28), (10000,) uint8
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import BinaryIO

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# idx dtype code -> NumPy dtype (big-endian, as stored).
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Refuse headers that promise more than this before reading anything (a corrupted header must
# not make the loader allocate gigabytes).
_MAX_BYTES = 1 << 32
_GZIP_MAGIC = b"\x1f\x8b"


def _read_exactly(stream: BinaryIO, n: int, path: str, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated: {what} needs {n} bytes, the file has {len(data)}")
    return data


def read_idx(path: str, expect: bytes | None = None) -> np.ndarray:
    """Reads one idx file, gzipped or plain, into an array of its header's dtype and shape.

    Args:
      path: the file. Gzip is recognised by its magic bytes, whatever the name.
      expect: if given, the 4-byte magic number the file must have (e.g. ``bytes([0, 0, 8, 3])``
        for unsigned bytes in 3 dimensions).

    Returns:
      The array, in native byte order.

    Raises:
      ValueError: naming the file, for a bad magic number or dtype code, a header that
        promises more data than the file holds (truncated) or less (trailing bytes), or a
        corrupted gzip stream.
    """
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if is_gzip else open(path, "rb") as stream:
            return _parse(stream, path, None if is_gzip else os.path.getsize(path), expect)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: corrupted gzip stream ({e})") from e


def _parse(stream: BinaryIO, path: str, file_size: int | None, expect: bytes | None) -> np.ndarray:
    magic = _read_exactly(stream, 4, path, "the idx header")
    if expect is not None and magic != expect:
        raise ValueError(f"{path}: bad idx magic number 0x{magic.hex()}, expected 0x{expect.hex()}")
    if magic[:2] != b"\x00\x00" or magic[2] not in _DTYPES or magic[3] == 0:
        raise ValueError(
            f"{path}: bad idx magic number 0x{magic.hex()}: expected 0x0000 followed by a dtype "
            f"code in {sorted(hex(c) for c in _DTYPES)} and a number of dimensions >= 1"
        )
    dtype, ndim = _DTYPES[magic[2]], magic[3]
    dims = tuple(
        int(d) for d in np.frombuffer(_read_exactly(stream, 4 * ndim, path, "the dims"), ">u4")
    )
    nbytes = math.prod(dims) * dtype.itemsize
    header = 4 + 4 * ndim
    if nbytes > _MAX_BYTES:
        raise ValueError(f"{path}: the header's dims {dims} promise {nbytes} bytes of data")
    if file_size is not None and file_size != header + nbytes:
        kind = "truncated" if file_size < header + nbytes else "trailing bytes"
        raise ValueError(
            f"{path}: {kind}: the header's dims {dims} of {dtype.name} need {header + nbytes} "
            f"bytes, the file has {file_size}"
        )
    data = _read_exactly(stream, nbytes, path, f"dims {dims} of {dtype.name}")
    if stream.read(1):
        raise ValueError(f"{path}: trailing bytes after the {nbytes} bytes of dims {dims}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: str, name: str) -> str:
    for candidate in (name + ".gz", name):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}(.gz) not found in {root}. Install the dataset with "
        f"`{INSTALL_HINT}` (it puts the files in {DEFAULT_ROOT}), or give root= the folder "
        "that holds them."
    )


def load_fashion_mnist(
    root: str = DEFAULT_ROOT, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one Fashion-MNIST split.

    Args:
      root: the folder with the idx files (gzipped or plain).
      split: ``"train"`` (60,000 examples in the full data set) or ``"test"`` (10,000).

    Returns:
      ``(images, labels)``: uint8 arrays of shapes ``(n, 28, 28)`` and ``(n,)``; labels in
      ``0..9`` (names in :data:`CLASSES`).

    Raises:
      ValueError: for an unknown ``split``, or, naming the file, a corrupted file: bad magic
        number, truncated or trailing data, images not ``(n, 28, 28)`` unsigned bytes, labels
        not ``(n,)`` unsigned bytes in ``0..9``, or different counts of images and labels.
      FileNotFoundError: if a file is missing (the message says how to install it).
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {tuple(FILES)}, got {split!r}")
    image_path, label_path = (_find(root, name) for name in FILES[split])
    images, labels = _check_images(image_path), _check_labels(label_path)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels"
        )
    return images, labels


def _check_images(path: str) -> np.ndarray:
    images = read_idx(path, expect=b"\x00\x00\x08\x03")  # unsigned bytes, 3 dimensions
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images must be 28x28, got shape {images.shape}")
    return images


def _check_labels(path: str) -> np.ndarray:
    labels = read_idx(path, expect=b"\x00\x00\x08\x01")  # unsigned bytes, 1 dimension
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{path}: labels must be in 0..9, found {int(labels.max())}")
    return labels
