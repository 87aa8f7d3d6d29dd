"""The Fashion-MNIST idx loader of benchmarks/datasets.py, on tiny files written here."""

import gzip
import os
import struct
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import datasets  # noqa: E402

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array, code=0x08, dims=None):
    """An idx file written by hand: header with struct (big-endian), data big-endian."""
    dims = array.shape if dims is None else dims
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    big = array.astype(array.dtype.newbyteorder(">"))
    return header + big.tobytes()


def write(path, payload, gz):
    if gz:
        path = str(path) + ".gz"
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path = str(path)
        with open(path, "wb") as f:
            f.write(payload)
    return path


def make_split(root, split="train", n=5, gz_images=True, gz_labels=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    img_name, lab_name = NAMES[split]
    write(root / img_name, idx_bytes(images), gz_images)
    write(root / lab_name, idx_bytes(labels), gz_labels)
    return images, labels


@pytest.mark.parametrize("gz_images, gz_labels", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_reads_gzip_and_plain(tmp_path, split, gz_images, gz_labels):
    images, labels = make_split(tmp_path, split, n=7, gz_images=gz_images, gz_labels=gz_labels)
    x, y = datasets.load_fashion_mnist(root=str(tmp_path), split=split)
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == np.uint8 and y.shape == (7,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize(
    "array, code",
    [
        (np.arange(-5, 7, dtype=np.int16).reshape(3, 4), 0x0B),
        (np.array([[1, -(2**31)], [2**31 - 1, 0]], np.int32), 0x0C),
        (np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3), 0x0D),
        (np.array([np.pi, -np.e]), 0x0E),
        (np.array([-128, 0, 127], np.int8), 0x09),
    ],
)
def test_read_idx_dtypes_are_big_endian(tmp_path, array, code):
    path = write(tmp_path / "x", idx_bytes(array, code), gz=False)
    out = datasets.read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist(root=str(tmp_path))
    make_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        datasets.load_fashion_mnist(root=str(tmp_path), split="test")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load_fashion_mnist(root=str(tmp_path), split="validation")


def corrupt(tmp_path, which, payload, gz=False):
    make_split(tmp_path, "train", n=4, gz_images=False, gz_labels=False)
    name = NAMES["train"][0 if which == "images" else 1]
    os.remove(tmp_path / name)
    return write(tmp_path / name, payload, gz)


IMAGES = np.zeros((4, 28, 28), np.uint8)
LABELS = np.array([0, 1, 2, 9], np.uint8)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "which, payload, match",
    [
        ("images", b"\x00\x00\x08\x01" + idx_bytes(IMAGES)[4:], "bad idx magic number"),
        ("images", b"\x08\x03\x00\x00" + idx_bytes(IMAGES)[4:], "bad idx magic number"),
        ("labels", idx_bytes(LABELS, code=0x0C, dims=(1,)), "bad idx magic number"),
        ("images", idx_bytes(IMAGES)[:-1], "truncated"),
        ("images", idx_bytes(IMAGES)[:10], "truncated"),
        ("labels", b"\x00\x00", "truncated"),
        ("images", idx_bytes(IMAGES) + b"\x00", "trailing bytes"),
        ("images", idx_bytes(np.zeros((4, 27, 28), np.uint8)), "28x28"),
        ("images", idx_bytes(np.zeros((3, 28, 28), np.uint8)), "3 images but .* 4 labels"),
        ("labels", idx_bytes(np.array([0, 1, 2], np.uint8)), "4 images but .* 3 labels"),
        ("labels", idx_bytes(np.array([0, 1, 2, 10], np.uint8)), "labels must be in 0..9"),
        ("images", idx_bytes(IMAGES, dims=(5, 28, 28)), "truncated"),
        ("images", idx_bytes(IMAGES, dims=(2**20, 2**10, 2**10)), "promise"),
    ],
)
def test_corrupted_files_name_the_file(tmp_path, which, payload, match, gz):
    path = corrupt(tmp_path, which, payload, gz)
    with pytest.raises(ValueError, match=match) as info:
        datasets.load_fashion_mnist(root=str(tmp_path))
    if "images but" not in match:
        assert path in str(info.value)
    else:
        assert NAMES["train"][0] in str(info.value) and NAMES["train"][1] in str(info.value)


def test_corrupted_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(IMAGES))
    path = corrupt(tmp_path, "images", b"", gz=False) + ".gz"
    os.remove(path[:-3])
    with open(path, "wb") as f:
        f.write(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupted gzip stream") as info:
        datasets.load_fashion_mnist(root=str(tmp_path))
    assert path in str(info.value)


def test_gzip_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(idx_bytes(LABELS)))
    np.testing.assert_array_equal(datasets.read_idx(str(path)), LABELS)


@pytest.mark.skipif(
    not os.path.isdir(datasets.DEFAULT_ROOT), reason="dataset-fashion-mnist is not installed"
)
def test_installed_package():
    for split, n in datasets.SIZES.items():
        x, y = datasets.load_fashion_mnist(split=split)
        assert x.shape == (n, 28, 28) and y.shape == (n,)
        assert np.bincount(y).tolist() == [n // 10] * 10
