"""Sparse export that loses nothing: atomic saves, exact dtypes, validated loading, format v2."""

import errno
import io
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src import export
from jaxprune._src.atomic import atomic_write
from jaxprune._src.export import load_sparse, save_sparse

# ----- helpers, independent of the module under test -----


def bits(x):
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


def assert_bit_exact(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(bits(got), bits(want))


def npy(a):
    f = io.BytesIO()
    np.lib.format.write_array(f, np.asarray(a), allow_pickle=True)
    return f.getvalue()


def u8(data):
    return np.frombuffer(bytes(data), np.uint8)


def zip_file(members, compression=zipfile.ZIP_DEFLATED):
    """A zip of ``name -> array`` (written as ``name.npy``) or ``name -> raw bytes``."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compression) as zf:
        for name, a in members:
            data = a if isinstance(a, bytes) else npy(a)
            zf.writestr(name if isinstance(a, bytes) else f"{name}.npy", data)
    f.seek(0)
    return f


def sparse_file(leaves, arrays, *, version=2, fmt="jaxprune.sparse"):
    meta = {"format": fmt, "version": version, "leaves": leaves}
    return zip_file([("header", u8(json.dumps(meta).encode())), *arrays.items()])


def ref_planes(values):
    """Byte planes by a plain loop: byte j of value i goes to j * n + i."""
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    n, size = values.size, values.dtype.itemsize
    out = np.zeros(raw.size, np.uint8)
    for i in range(n):
        for j in range(size):
            out[j * n + i] = raw[i * size + j]
    return out


def ref_gaps(kept):
    """The run-length index by a plain loop (see save_sparse's docstring)."""
    out, run = [], 0
    for k in kept:
        if k:
            out.append(run)
            run = 0
        else:
            run += 1
            if run == 255:
                out.append(255)
                run = 0
    return np.array(out, np.uint8)


def members(f):
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    f.seek(0)
    return json.loads(arrays.pop("header").tobytes()), arrays


def saved(params):
    f = io.BytesIO()
    save_sparse(f, params)
    f.seek(0)
    return f


# ----- atomic writes -----


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "data.bin"
    with atomic_write(target) as f:
        f.write(b"one")
    assert target.read_bytes() == b"one"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open(path, "wb")
    target.chmod(0o640)
    with atomic_write(target) as f:
        f.write(b"one")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode
    for error in (RuntimeError("writer failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_write(target) as f:
                f.write(b"tw")
                raise error
        assert target.read_bytes() == b"one" and os.listdir(tmp_path) == ["data.bin"]
    # A folder in the way, and a missing folder: OSError, nothing left behind.
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "folder") as f:
            f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == ["data.bin", "folder"]
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "missing" / "x.bin") as f:
            pass


def small_model(seed):
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((64, 32)) < 0.1, rng.normal(size=(64, 32)), 0.0).astype(np.float32)
    return {"Dense_0": {"kernel": w, "bias": rng.normal(size=32).astype(np.float32)}}


def assert_tree_exact(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_bit_exact(a, b)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old, new = small_model(0), small_model(1)
    save_sparse(path, old)
    real_write = export._write_member
    written = []

    def fail_after_one(zf, name, a):
        if written:
            raise RuntimeError("writer failed")
        written.append(name)
        real_write(zf, name, a)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    failures = [
        (export, "_write_member", fail_after_one, RuntimeError),
        (os, "fsync", disk_full, OSError),
    ]
    for module, name, fake, error in failures:
        written.clear()
        with monkeypatch.context() as m:
            m.setattr(module, name, fake)
            with pytest.raises(error):
                save_sparse(path, new)
        assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left
        assert_tree_exact(load_sparse(path), old)
    # A leaf that cannot be saved is found before the file is touched.
    with pytest.raises(TypeError, match=r"'Dense_0/name' of dtype <U4"):
        save_sparse(path, {"Dense_0": {**new["Dense_0"], "name": np.array(["text"])}})
    assert os.listdir(tmp_path) == ["model.npz"]
    assert_tree_exact(load_sparse(path), old)
    save_sparse(path, new)
    assert_tree_exact(load_sparse(path), new)


def test_killed_process_keeps_the_previous_file(tmp_path):
    # save_sparse writes through atomic_write; a process killed in the middle of it (SIGKILL:
    # no Python clean-up runs) leaves the previous file whole. atomic.py is loaded on its own
    # so the child starts in milliseconds, without jax.
    path = tmp_path / "model.npz"
    old = small_model(0)
    save_sparse(path, old)
    script = textwrap.dedent(
        f"""
        import importlib.util, os, signal
        spec = importlib.util.spec_from_file_location("atomic", {export_atomic_file()!r})
        atomic = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic)
        with atomic.atomic_write({os.fspath(path)!r}) as f:
            f.write(b"PK half of a new file")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert_tree_exact(load_sparse(path), old)
    # Only a killed process leaves its temporary file behind, hidden and named after the file.
    stray = sorted(set(os.listdir(tmp_path)) - {"model.npz"})
    assert len(stray) == 1 and stray[0].startswith(".model.npz.") and stray[0].endswith(".tmp")
    assert (tmp_path / stray[0]).read_bytes() == b"PK half of a new file"


def export_atomic_file():
    from jaxprune._src import atomic

    return atomic.__file__


def test_file_names_and_file_objects(tmp_path):
    params = small_model(2)
    save_sparse(tmp_path / "a", params)  # numpy's rule: .npz is added
    save_sparse(os.fspath(tmp_path / "b.npz"), params)  # not twice
    save_sparse(os.fsencode(tmp_path / "c"), params)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz", "c.npz"]
    with open(tmp_path / "d.bin", "wb") as f:  # a file object is written as it is
        f.write(b"prefix")
        save_sparse(f, params)
    with open(tmp_path / "d.bin", "rb") as f:
        assert f.read(6) == b"prefix"
        assert_tree_exact(load_sparse(f), params)
    assert saved(params).getvalue() == (tmp_path / "b.npz").read_bytes()  # deterministic bytes
    for name in ("a.npz", "b.npz", "c.npz"):
        assert_tree_exact(load_sparse(tmp_path / name), params)


# ----- dtypes -----

# Every dtype jax has: numpy's, and the ml_dtypes ones (bfloat16, float8/6/4, int4/2, ...).
ML_DTYPES = [
    getattr(jnp, n)
    for n in dir(jnp)
    if n.startswith(("float8_", "float6_", "float4_", "int4", "uint4", "int2", "uint2"))
]
FLOATS = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]
OTHERS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
OTHERS += [np.bool_, np.complex64, np.complex128]


def bit_width(dtype):
    if dtype == np.bool_:
        return 1
    if dtype.kind != "V":
        return 8 * dtype.itemsize
    info = jnp.finfo(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype)
    return min(info.bits, 8 * dtype.itemsize)


def test_the_dtype_list_has_the_ml_dtypes():
    names = {np.dtype(d).name for d in ML_DTYPES}
    assert {"float8_e4m3fn", "float8_e5m2", "int4", "float4_e2m1fn"} <= names


@pytest.mark.parametrize("dtype", FLOATS + ML_DTYPES + OTHERS, ids=lambda d: np.dtype(d).name)
def test_every_accepted_dtype_round_trips_bit_exact(dtype):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(3)

    def random_bits(shape):
        raw = rng.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8)
        if bit_width(dtype) < 8:  # bool, int4, float4_e2m1fn, ...: the low bits of a byte
            raw &= (1 << bit_width(dtype)) - 1
        return raw.view(dtype).reshape(shape)  # every bit pattern: NaN payloads, inf, -0.0

    dense = random_bits((7, 9))
    mostly_zero = np.where(rng.random((40, 50)) < 0.05, random_bits((40, 50)), dtype.type(0))
    params = {"dense": dense, "sparse": mostly_zero, "scalar": random_bits(()), "empty": dense[:0]}
    loaded = load_sparse(saved(params), like=params)
    header, _ = members(saved(params))
    kinds = {e["path"]: e["kind"] for e in header["leaves"]}
    floating = jnp.issubdtype(dtype, jnp.floating)
    assert kinds["sparse"] == ("gaps" if floating and np.mean(mostly_zero == 0) > 0.5 else "dense")
    zero = np.zeros((), dtype)
    for key, x in params.items():
        # A leaf stored sparse keeps no zeros: its -0.0 comes back as +0.0. Every other bit
        # pattern comes back as it is.
        want = x if kinds[key] == "dense" else np.where(x == 0, zero, x)
        assert_bit_exact(loaded[key], want)
        assert loaded[key].flags.writeable


def test_sub_byte_values_are_saved_in_their_one_byte_pattern():
    # ml_dtypes reads any byte as an int4 (0xF7 as 7); the file holds the canonical 0x07.
    x = np.array([0x00, 0xF7, 0x13, 0x0F], np.uint8).view(jnp.int4)
    loaded = load_sparse(saved({"q": x}))["q"]
    assert loaded.astype(np.int32).tolist() == x.astype(np.int32).tolist() == [0, 7, 3, -1]
    assert loaded.view(np.uint8).tolist() == [0x00, 0x07, 0x03, 0x0F]


@pytest.mark.parametrize(
    "bad",
    [
        np.array(["text"]),
        np.array([b"bytes"]),
        np.array([object()], dtype=object),
        np.zeros(2, "V8"),
        np.zeros(2, [("a", "<i4"), ("b", "<f4")]),
        np.zeros(2, "datetime64[s]"),
        np.zeros(2, "timedelta64[s]"),
        np.zeros((), jax.dtypes.float0),
    ],
    ids=lambda a: a.dtype.str,
)
def test_dtypes_that_cannot_load_back_are_rejected(bad):
    with pytest.raises(TypeError, match=re.escape(f"leaf 'x/bad' of dtype {bad.dtype}:")):
        save_sparse(io.BytesIO(), {"x": {"ok": np.ones(2), "bad": bad}})


def test_non_native_byte_order_loads_native():
    x = np.array([[0.0, 1.5, 0.0, -2.0]] * 4, ">f4")
    loaded = load_sparse(saved({"w": x}))["w"]
    assert loaded.dtype == np.float32 and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, x)


# ----- format version 2 -----


def test_version_2_layout_against_reference_loops():
    rng = np.random.default_rng(4)
    n = 3000
    very_sparse = np.zeros(n, np.float32)
    very_sparse[[0, 254, 255, 511, 1022, 1300]] = rng.normal(size=6)  # gaps 0, 253, 0, 255, ...
    two_of_four = np.tile(np.array([1.5, 0, 0, -2.5], np.float32), (64, 8))
    params = {
        "a": very_sparse,
        "b": two_of_four,
        "c": np.zeros((600,), np.float32),
        "d": rng.normal(size=(3, 5)).astype(jnp.bfloat16),
    }
    header, arrays = members(saved(params))
    assert header["format"] == "jaxprune.sparse" and header["version"] == 2
    entries = {e["path"]: e for e in header["leaves"]}
    assert [entries[k]["kind"] for k in "abcd"] == ["gaps", "bitmap", "gaps", "dense"]
    order = [e["path"] for e in header["leaves"]]
    i = {k: order.index(k) for k in "abcd"}
    np.testing.assert_array_equal(arrays[f"gaps_{i['a']}"], ref_gaps(very_sparse != 0))
    np.testing.assert_array_equal(
        arrays[f"values_{i['a']}"], ref_planes(very_sparse[very_sparse != 0])
    )
    np.testing.assert_array_equal(arrays[f"bits_{i['b']}"], np.packbits(two_of_four != 0))
    np.testing.assert_array_equal(arrays[f"gaps_{i['c']}"], [255, 255])  # 600 = 2·255 + 90
    np.testing.assert_array_equal(arrays[f"dense_{i['d']}"], ref_planes(params["d"]))
    assert_tree_exact(load_sparse(saved(params)), params)


@pytest.mark.parametrize("n", [1, 254, 255, 256, 509, 510, 511, 1000])
def test_gaps_round_trip_at_run_boundaries(n):
    rng = np.random.default_rng(n)
    for kept in (np.zeros(n, bool), np.eye(1, n, n - 1, bool)[0], rng.random(n) < 0.01):
        np.testing.assert_array_equal(export._gaps(kept), ref_gaps(kept))
        positions = export._positions_from_gaps(ref_gaps(kept), n)
        np.testing.assert_array_equal(positions, np.flatnonzero(kept))


def test_loads_version_1_files_written_the_old_way():
    # Version 1: raw (interleaved) value bytes, kinds "sparse" (packbits) and "dense", written
    # with numpy.savez_compressed.
    w = np.array([[0.0, 1.25, 0.0], [-3.5, 0.0, 0.0]], np.float32)
    b = np.array([1.0, -2.0, 0.5], jnp.bfloat16)
    meta = {
        "format": "jaxprune.sparse",
        "version": 1,
        "leaves": [
            {"path": "layer/w", "shape": [2, 3], "dtype": "float32", "kind": "sparse"},
            {"path": "layer/b", "shape": [3], "dtype": "bfloat16", "kind": "dense"},
            {"path": "step", "shape": [], "dtype": "int32", "kind": "dense"},
        ],
    }
    f = io.BytesIO()
    np.savez_compressed(
        f,
        header=u8(json.dumps(meta).encode()),
        bits_0=np.packbits(w.reshape(-1) != 0),
        values_0=w[w != 0].view(np.uint8),
        dense_1=b.view(np.uint8),
        dense_2=np.int32(7).reshape(1).view(np.uint8),
    )
    f.seek(0)
    loaded = load_sparse(f)
    assert_bit_exact(loaded["layer"]["w"], w)
    assert_bit_exact(loaded["layer"]["b"], b)
    assert loaded["step"].shape == () and int(loaded["step"]) == 7
    assert all(x.flags.writeable for x in jax.tree.leaves(loaded))
    # Version 2 kinds are not version 1's.
    meta["leaves"][0]["kind"] = "bitmap"
    with pytest.raises(ValueError, match="unknown kind 'bitmap'"):
        load_sparse(sparse_file(meta["leaves"], {}, version=1))


# ----- damaged and hostile files -----

W = np.array([[0.0, 1.5, 0.0, 0.0], [0.0, 0.0, -2.0, 0.0]], np.float32)


def leaf(kind, shape=(2, 4), dtype="float32", path="w"):
    return {"path": path, "shape": list(shape), "dtype": dtype, "kind": kind}


def valid_arrays(kind):
    kept = W.reshape(-1) != 0
    values = ref_planes(W.reshape(-1)[kept])
    if kind == "dense":
        return {"dense_0": ref_planes(W)}
    if kind == "bitmap":
        return {"bits_0": np.packbits(kept), "values_0": values}
    return {"gaps_0": ref_gaps(kept), "values_0": values}


@pytest.mark.parametrize("kind", ["dense", "bitmap", "gaps"])
def test_hand_built_valid_files_load(kind):
    assert_bit_exact(load_sparse(sparse_file([leaf(kind)], valid_arrays(kind)))["w"], W)


def hostile_files():
    """(name, header leaves, arrays, what the error says)."""
    bm, gp, dn = valid_arrays("bitmap"), valid_arrays("gaps"), valid_arrays("dense")
    huge = [2**31, 2**20]  # 2^51 entries: numpy could describe it, the file does not hold it
    yield "huge dense", [leaf("dense", huge)], dn, "'dense_0' has 32 bytes, the header implies 9"
    yield "huge bitmap", [leaf("bitmap", huge)], bm, "'bits_0' has 1 bytes, the header implies 2"
    yield "huge gaps", [leaf("gaps", huge)], gp, "cover 7 entries of a leaf of 2251799813685248"
    yield "product too big", [leaf("dense", [2**62, 4, 0])], {"dense_0": u8(b"")}, "shape"
    yield "negative dim", [leaf("dense", [-2, -4])], dn, "shape"
    yield "float dim", [leaf("dense", [2.0, 4])], dn, "shape"
    yield "bool dim", [leaf("dense", [True, 8])], dn, "shape"
    yield "dim too big", [leaf("dense", [2**63, 0])], {"dense_0": u8(b"")}, "shape"
    yield "too many dims", [leaf("dense", [1] * 65 + [8])], dn, "shape"
    yield "shape not a list", [{**leaf("dense"), "shape": 8}], dn, "shape"
    yield (
        "product mismatch",
        [leaf("dense", (3, 3))],
        dn,
        "'dense_0' has 32 bytes, the header implies 36",
    )
    bits_0 = {**bm, "bits_0": u8(b"\x42\x00")}
    yield "bits too long", [leaf("bitmap")], bits_0, "'bits_0' has 2 bytes, the header implies 1"
    yield (
        "bits too short",
        [leaf("bitmap", (2, 8))],
        bm,
        "'bits_0' has 1 bytes, the header implies 2",
    )
    yield "bit past the end", [leaf("bitmap", (7,))], {**bm, "bits_0": u8(b"\x43")}, "past its end"
    yield "values != set bits", [leaf("bitmap")], {**bm, "bits_0": u8(b"\x43")}, "implies 12"
    yield "values != gaps", [leaf("gaps")], {**gp, "gaps_0": u8(b"\x01\x04\x00")}, "implies 12"
    yield "gaps past the end", [leaf("gaps")], {**gp, "gaps_0": u8(b"\x01\x10")}, "cover 19"
    yield "gaps short of the end", [leaf("gaps", (2, 400))], gp, "cover 7 entries of a leaf of 800"
    zeros = {**bm, "values_0": np.zeros(8, np.uint8)}
    yield "zero among values", [leaf("bitmap")], zeros, "zeros among its non-zero values"
    bools = {"dense_0": u8(b"\x00\x01\x02\x01")}
    yield "bools not 0/1", [leaf("dense", (4,), "bool")], bools, "bools other than 0 and 1"
    yield (
        "int4 byte out of range",
        [leaf("dense", (4,), "int4")],
        bools | {"dense_0": u8(b"\x00\x01\xf7\x01")},
        "bytes that are no int4 value",
    )
    two = {**dn, "dense_1": dn["dense_0"]}
    yield "duplicate paths", [leaf("dense"), leaf("dense")], two, "two leaves have the path 'w'"
    yield "unknown kind", [leaf("sparse")], bm, "unknown kind 'sparse'"
    yield "kind missing", [{"path": "w", "shape": [2, 4], "dtype": "float32"}], dn, "kind None"
    dtypes = ("float33", "O", "object", "U5", "S3", "V8", "a", "(2,)i4", "[('a','<i4')]", 7, None)
    for dtype in dtypes:
        yield f"dtype {dtype!r}", [leaf("dense", dtype=dtype)], dn, re.escape(f"dtype {dtype!r}")
    yield "path not a string", [{**leaf("dense"), "path": 3}], dn, "the path 3 is not a string"
    yield "entry not an object", [["w", [2, 4]]], dn, "a leaf entry is list"
    yield (
        "missing array",
        [leaf("bitmap")],
        {"bits_0": bm["bits_0"]},
        r"missing arrays \['values_0'\]",
    )
    yield "extra array", [leaf("dense")], {**dn, "x": dn["dense_0"]}, r"unexpected arrays \['x'\]"
    pickled = np.array([{"a": 1}, None], dtype=object)
    yield (
        "pickled object array",
        [leaf("dense")],
        {"dense_0": pickled},
        r"is object\[2\], not bytes",
    )
    yield "float array", [leaf("dense")], {"dense_0": W}, "is float32"
    yield "2-D bytes", [leaf("dense")], {"dense_0": dn["dense_0"].reshape(4, 8)}, "is uint8"


@pytest.mark.parametrize("case", list(hostile_files()), ids=lambda c: c[0])
def test_hostile_files_raise_value_error_before_allocating(case):
    _, leaves, arrays, match = case
    f = sparse_file(leaves, arrays)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="corrupt jaxprune sparse file: ") as info:
            load_sparse(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert re.search(match, str(info.value)), str(info.value)
    assert peak < 2**20  # nothing of the claimed size was allocated


def test_damaged_and_wrong_format_files():
    good = saved(small_model(5)).getvalue()
    cases = {
        "empty": b"",
        "random bytes": np.random.default_rng(6).bytes(5000),
        "ordinary npz": zip_file([("a", np.ones(3))]).getvalue(),
        "zip without header": zip_file([("dense_0", u8(b"1234"))]).getvalue(),
        "text file": b"format = jaxprune.sparse\n",
    }
    for n in (1, 4, 22, 100, len(good) // 2, len(good) - 22, len(good) - 1):
        cases[f"truncated to {n}"] = good[:n]

    def header_file(raw):
        return zip_file([("header", u8(raw))]).getvalue()

    cases["header not JSON"] = header_file(b"{format: 1")
    cases["header not UTF-8"] = header_file(b'{"format": "\xff"}')
    cases["header nests deep"] = header_file(b"[" * 100_000 + b"]" * 100_000)
    cases["header a list"] = header_file(b"[1, 2]")
    cases["header NaN"] = header_file(b'{"format": "jaxprune.sparse", "version": NaN}')
    for fmt, version in [("other", 2), ("jaxprune.sparse", 3), ("jaxprune.sparse", "2")]:
        cases[f"format {fmt} {version}"] = sparse_file([], {}, version=version, fmt=fmt).getvalue()
    cases["version true"] = sparse_file([], {}, version=True).getvalue()
    cases["leaves not a list"] = header_file(b'{"format": "jaxprune.sparse", "version": 2}')
    for name, data in cases.items():
        with pytest.raises(ValueError, match="jaxprune sparse file"):
            load_sparse(io.BytesIO(data))
            pytest.fail(name)


def test_zip_level_damage():
    dn = valid_arrays("dense")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        twice = sparse_file([leaf("dense")], {**dn})
        data = twice.getvalue()
        f = io.BytesIO(data)
        with zipfile.ZipFile(f, "a") as zf:
            zf.writestr("dense_0.npy", npy(dn["dense_0"]))
    files = {"duplicate names": f.getvalue()}
    header = u8(
        json.dumps({"format": "jaxprune.sparse", "version": 2, "leaves": [leaf("dense")]}).encode()
    )
    files["name with and without .npy"] = zip_file(
        [("header", header), ("dense_0", dn["dense_0"]), ("dense_0", npy(dn["dense_0"]))]
    ).getvalue()
    header = u8(
        json.dumps({"format": "jaxprune.sparse", "version": 2, "leaves": [leaf("dense")]}).encode()
    )
    files["bzip2 member"] = zip_file(
        [("header", header), ("dense_0", dn["dense_0"])], compression=zipfile.ZIP_BZIP2
    ).getvalue()
    # The "encrypted" flag set in the central directory.
    raw = bytearray(zip_file([("header", header), ("dense_0", dn["dense_0"])]).getvalue())
    at = raw.rfind(b"PK\x01\x02")
    raw[at + 8] |= 1
    files["encrypted member"] = bytes(raw)
    for name, data in files.items():
        with pytest.raises(ValueError, match="jaxprune sparse file"):
            load_sparse(io.BytesIO(data))
            pytest.fail(name)


def test_every_flipped_byte_is_caught_or_harmless():
    params = {"w": W, "b": np.array([1.0, 2.0], np.float32)}
    good = saved(params).getvalue()
    for at in range(len(good)):
        data = bytearray(good)
        data[at] ^= 0xFF
        try:
            loaded = load_sparse(io.BytesIO(bytes(data)))
        except ValueError:
            continue
        # A flip in bytes nothing reads (a timestamp, "version made by"): the same params.
        assert_tree_exact(loaded, params)


def test_missing_file_is_an_os_error_and_a_number_no_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "nothing.npz")
    with pytest.raises(TypeError, match="file must be a file name or a readable binary file"):
        load_sparse(0)  # not standard input's file descriptor


# ----- fuzzing -----

GOOD = saved({"w": W, "b": np.array([1.0, 0.0], jnp.bfloat16), "n": np.int32(3)}).getvalue()


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.sampled_from("rid")),
        min_size=1,
        max_size=8,
    ),
    cut=st.none() | st.integers(0, len(GOOD)),
)
def test_fuzz_mutated_files(edits, cut):
    data = bytearray(GOOD)
    for at, byte, how in edits:
        at = min(at, len(data) - 1) if data else 0
        if how == "r" and data:
            data[at] = byte
        elif how == "i":
            data.insert(at, byte)
        elif data:
            del data[at]
    if cut is not None:
        del data[cut:]
    try:
        load_sparse(io.BytesIO(bytes(data)))
    except ValueError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from(["w", "float32", "bfloat16", "bool", "O", "V8", "dense", "bitmap", "gaps"])
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "path": st.sampled_from(["w", "b", ""]) | json_values,
        "shape": st.lists(st.integers(0, 9), max_size=3)
        | st.lists(st.integers(-3, 2**64), max_size=4)
        | json_values,
        "dtype": st.sampled_from(["float32", "bfloat16", "bool", "int8", "float8_e4m3fn"])
        | json_values,
        "kind": st.sampled_from(["dense", "bitmap", "gaps", "sparse"]) | json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from([1, 2]) | json_values,
    leaves=st.lists(entries, max_size=3) | json_values,
    arrays=st.dictionaries(
        st.sampled_from(["dense_0", "bits_0", "gaps_0", "values_0", "dense_1", "values_1"]),
        st.binary(max_size=40),
        max_size=4,
    ),
)
def test_fuzz_random_headers(version, leaves, arrays):
    f = sparse_file(leaves, {k: u8(v) for k, v in arrays.items()}, version=version)
    try:
        load_sparse(f)
    except ValueError:
        pass


def test_declared_sizes_are_checked_against_the_file_before_reading(tmp_path):
    # A plainly stored member whose zip entry and .npy header both claim 64 MiB, consistent
    # with the JSON header, in a file of a few hundred bytes: reading the claimed size from
    # a file on disk would allocate it at once.
    n = 2**26
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "|u1", "fortran_order": False, "shape": (n,)}
    )
    member = head.getvalue() + b"0123456789"
    meta = {"format": "jaxprune.sparse", "version": 2, "leaves": [leaf("dense", [n], "uint8")]}
    raw = bytearray(
        zip_file(
            [("header", u8(json.dumps(meta).encode())), ("dense_0.npy", member)],
            compression=zipfile.ZIP_STORED,
        ).getvalue()
    )
    at = raw.rfind(b"PK\x01\x02")  # the central directory entry of dense_0.npy
    assert raw[at + 46 : at + 57] == b"dense_0.npy"
    declared = (len(head.getvalue()) + n).to_bytes(4, "little")
    raw[at + 20 : at + 28] = declared + declared  # compressed and uncompressed sizes
    path = tmp_path / "hostile.npz"
    path.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="'dense_0' declares more bytes than the file holds"):
            load_sparse(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from([1, 2]), data=st.data())
def test_fuzz_valid_headers_with_random_arrays(version, data):
    # Headers that pass every check, arrays of random bytes, mostly of the right sizes: the
    # decoding itself (bits, gaps, values, bools) must raise ValueError or give the header's
    # shapes and dtypes.
    kinds = {1: ["dense", "sparse"], 2: ["dense", "bitmap", "gaps"]}[version]
    dtypes = ["float32", "bfloat16", "bool", "int8", "float8_e4m3fn", "complex64"]
    leaves, arrays = [], {}
    for i in range(data.draw(st.integers(1, 2))):
        shape = data.draw(st.lists(st.integers(0, 6), max_size=2))
        dtype = data.draw(st.sampled_from(dtypes))
        kind = data.draw(st.sampled_from(kinds))
        leaves.append({"path": f"p{i}", "shape": shape, "dtype": dtype, "kind": kind})
        size, itemsize = int(np.prod(shape)), np.dtype(jnp.dtype(dtype)).itemsize

        def draw_bytes(n):
            n = max(n + data.draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
            return u8(data.draw(st.binary(min_size=n, max_size=n)))

        if kind == "dense":
            arrays[f"dense_{i}"] = draw_bytes(size * itemsize)
            continue
        if kind == "gaps":
            arrays[f"gaps_{i}"] = positions = draw_bytes(data.draw(st.integers(0, size)))
            kept = int(np.count_nonzero(positions != 255))
        else:
            arrays[f"bits_{i}"] = positions = draw_bytes(-(-size // 8))
            kept = int(np.count_nonzero(np.unpackbits(positions)[:size]))
        arrays[f"values_{i}"] = draw_bytes(kept * itemsize)
    try:
        loaded = load_sparse(sparse_file(leaves, arrays, version=version))
    except ValueError:
        return
    for entry in leaves:
        x = loaded[entry["path"]]
        assert x.shape == tuple(entry["shape"]) and x.dtype == jnp.dtype(entry["dtype"])
