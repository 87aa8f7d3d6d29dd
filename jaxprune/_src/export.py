"""After training: strip the pruning state, export sparse leaves, save and load compactly.

* :func:`strip` is TensorFlow's ``strip_pruning_vars`` / tfmot's ``strip_pruning``: the masks
  are fused into the weights and the pruning state is dropped, leaving plain params.
* :func:`to_bcoo` turns pruned leaves into ``jax.experimental.sparse.BCOO`` matrices that hold
  only their non-zeros.
* :func:`save_sparse` / :func:`load_sparse` write and read a compressed ``.npz`` that says
  where the non-zeros are (one bit per entry, or the runs of zeros between them) and holds the
  non-zero values themselves, so a model at 90% sparsity takes a fraction of its dense size on
  disk. Saving is atomic, loading validates the file before it allocates; no pickle is
  involved.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune._src import leaf_rules, trees
from jaxprune._src.atomic import atomic_write
from jaxprune._src.base import LeafRule, Masks, Params
from jaxprune._src.summaries import get_pruning_state
from jaxprune._src.trees import flat_leaves, pair_with_masks

_FORMAT = "jaxprune.sparse"
_VERSION = 2  # version 1 (raw values, bit masks only) still loads


def _fuse(x: Any, mask: Any) -> Any:
    if np.ndim(mask) == 0:
        return x  # not pruned
    x = jnp.asarray(x)
    return jnp.where(mask, x, jnp.zeros((), x.dtype))


def strip(params: Params, opt_state: Any) -> Params:
    """Fuses the pruning masks into ``params`` and drops the pruning state.

    TensorFlow's ``strip_pruning_vars``: every pruned leaf becomes ``where(mask, w, 0)``, with
    the masks of the :func:`jaxprune.magnitude_pruning` state found anywhere in ``opt_state``.
    The result is a plain params tree of ``params``' structure, ready to save or serve; leaves
    that are not pruned are returned as they are. Pruned entries are ``+0.0`` (tfmot's
    ``w * mask`` leaves ``-0.0`` where a pruned weight was negative).

    Args:
      params: the trained params.
      opt_state: the optimizer state that holds the pruning state.

    Returns:
      A pytree with the structure of ``params``.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state or more than one, or its masks do not
        match ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]]), "b": jnp.ones(2)}
      >>> tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
      >>> _, state = tx.update({"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, tx.init(params),
      ...                      params)
      >>> strip(params, state)["w"]
      Array([[ 0., -4.],
             [ 3.,  0.]], dtype=float32)
    """
    masks = get_pruning_state(opt_state).masks
    pairs = pair_with_masks(params, masks)
    return trees.rebuild(params, [_fuse(x, m) for _, x, m in pairs])


def _to_bcoo(x: Any) -> Any:
    # Imported here: jax.experimental.sparse takes about a second to import, and only to_bcoo
    # needs it.
    from jax.experimental import sparse

    # Built on the host from the non-zeros, in row-major order as BCOO.fromdense lays them
    # out; fromdense itself would compile a program per leaf shape.
    a = np.asarray(x)
    if max(a.shape, default=0) >= 2**31:
        raise ValueError(f"cannot index a leaf of shape {a.shape} with int32 indices")
    nonzero = a != 0
    indices = np.argwhere(nonzero).astype(np.int32)
    data = a[nonzero]
    return sparse.BCOO(
        (jnp.asarray(data), jnp.asarray(indices)),
        shape=a.shape,
        indices_sorted=True,
        unique_indices=True,
    )


def to_bcoo(params: Params, *, masks: Masks | None = None, prune: LeafRule | None = None) -> Params:
    """Pruned leaves of ``params`` as ``jax.experimental.sparse.BCOO`` arrays of their non-zeros.

    Which leaves are converted: with ``masks`` (e.g. :func:`jaxprune.get_masks`), the leaves
    whose mask is an array, after fusing the mask in (``where(mask, w, 0)``); without, the
    leaves that ``prune`` selects (the rules of :func:`jaxprune.magnitude_pruning`; default:
    float leaves of rank >= 2). Each converted leaf stores exactly its non-zero entries
    (``nse`` = their count), so ``leaf.todense()`` gives the dense leaf back exactly; a
    ``-0.0`` counts as zero and comes back as ``+0.0``. Other leaves are returned as they are.

    This runs on the host (the number of non-zeros sets the BCOO's static size), not under
    ``jit``.

    Args:
      params: a pytree of arrays.
      masks: masks shaped like ``params``, or ``None``.
      prune: a leaf rule (regex searched in the ``/``-joined path, or a predicate
        ``(path, leaf) -> bool``), used when ``masks`` is ``None``.

    Returns:
      A pytree with the structure of ``params``, pruned leaves replaced by ``BCOO`` arrays.

    Raises:
      ValueError: if both ``masks`` and ``prune`` are given, the masks do not match ``params``,
        or the rule matches no leaf.
      TypeError: if the rule selects a non-float leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> sp = to_bcoo({"w": jnp.array([[0.0, 2.0], [0.0, 0.0]]), "b": jnp.ones(2)})
      >>> sp["w"].nse, sp["w"].todense()
      (1, Array([[0., 2.],
             [0., 0.]], dtype=float32))
    """
    if masks is not None and prune is not None:
        raise ValueError("give masks or prune, not both: masks already say which leaves to convert")
    if masks is not None:
        new = [
            x if np.ndim(m) == 0 else _to_bcoo(_fuse(x, m))
            for _, x, m in pair_with_masks(params, masks)
        ]
        return trees.rebuild(params, new)
    rule = leaf_rules.compile_rule(prune, "prune")
    flat = flat_leaves(params)
    paths, leaves = [p for p, _ in flat], [x for _, x in flat]
    chosen = leaf_rules.select(paths, leaves, rule)
    return trees.rebuild(
        params, [_to_bcoo(x) if on else x for x, on in zip(leaves, chosen, strict=True)]
    )


# ----- compact saving -----

# A file is a zip of uint8 ``.npy`` arrays (what ``numpy.load(..., allow_pickle=False)``
# reads): ``header`` (UTF-8 JSON) and, for leaf ``i`` of the header, ``dense_i`` or
# ``values_i`` with ``bits_i`` (version 1 and 2) or ``gaps_i`` (version 2).
_MAX_NDIM = 64  # numpy's own limit
_NPY_HEADER_LIMIT = 10_000  # numpy's default for the .npy header of one array
_KINDS = {1: ("dense", "sparse"), 2: ("dense", "bitmap", "gaps")}
_POSITIONS = {"sparse": "bits", "bitmap": "bits", "gaps": "gaps"}
_SUPPORTED = "bool, integers, floats (bfloat16, float8 and the other ml_dtypes floats too), complex"


def _unsupported(dtype: np.dtype) -> str | None:
    """Why ``dtype`` cannot be saved and loaded back exactly, or ``None`` if it can."""
    if dtype.kind in "biufc":
        return None
    if dtype.kind != "V":
        return "not an array of numbers"
    if dtype.names is not None or dtype.subdtype is not None or dtype.type is np.void:
        return "a structured or raw void dtype"
    try:  # ml_dtypes scalars (bfloat16, float8_*, int4, ...) are kind "V" but known to jax
        known = np.dtype(jnp.dtype(str(dtype))) == dtype
    except Exception:  # noqa: BLE001 (any failure means the name does not come back)
        known = False
    return None if known else "a void dtype jax does not know by name"


def _sub_byte(dtype: np.dtype) -> bool:
    """Whether ``dtype`` uses fewer bits than its bytes hold (int4, float4_e2m1fn, ...)."""
    if dtype.kind != "V":
        return False
    info = jnp.finfo(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype)
    return info.bits < 8 * dtype.itemsize


def _canonical(x: np.ndarray) -> np.ndarray:
    # A sub-byte value has one byte pattern (its bits, the rest zero) but ml_dtypes reads any
    # byte: a round trip through float32, exact for these small types, rewrites the pattern.
    return x.astype(np.float32).astype(x.dtype)


def _planes(a: np.ndarray) -> np.ndarray:
    # Byte planes: the first byte of every value, then the second, ... Deflate then sees the
    # sign and exponent bytes side by side, which repeat a lot (10-15% smaller for float32);
    # the raw bytes keep the copy exact (NaN payloads, bfloat16) and pickle-free.
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return np.ascontiguousarray(b.reshape(a.size, a.dtype.itemsize).T).reshape(-1)


def _from_planes(raw: np.ndarray, dtype: np.dtype, count: int) -> np.ndarray:
    planes = raw.reshape(dtype.itemsize, count)
    return np.ascontiguousarray(planes.T).reshape(-1).view(dtype)


def _gaps(kept: np.ndarray) -> np.ndarray:
    """Run lengths of pruned entries, one byte each: ``v < 255`` is v pruned then one kept,
    ``255`` is 255 pruned; trailing pruned entries are written down to fewer than 255."""
    where = np.flatnonzero(kept)
    gaps = np.diff(where, prepend=-1) - 1
    tail = kept.size - 1 - (int(where[-1]) if where.size else -1)
    ends = np.cumsum(gaps // 255 + 1) - 1
    out = np.full((int(ends[-1]) + 1 if ends.size else 0) + tail // 255, 255, np.uint8)
    out[ends] = gaps % 255
    return out


def _positions_from_gaps(gaps: np.ndarray, size: int) -> np.ndarray:
    ends = np.flatnonzero(gaps != 255)
    sums = np.cumsum(gaps, dtype=np.int64)
    covered = (int(sums[-1]) if gaps.size else 0) + ends.size
    if not 0 <= size - covered < 255:
        raise _corrupt(f"the gaps cover {covered} entries of a leaf of {size}")
    return sums[ends] + np.arange(ends.size)


def _deflated_size(a: np.ndarray) -> int:
    # Level 1 is 4-5x faster than the level the file is written with (6) and ranks the two
    # indexes the same way.
    return len(zlib.compress(a.tobytes(), 1))


def _encode(i: int, x: np.ndarray, entry: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """The arrays that store leaf ``i``; sets ``entry["kind"]``."""
    if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0:
        kept = (x != 0).reshape(-1)  # NaN is non-zero; +0.0 and -0.0 are both zero
        count = int(np.count_nonzero(kept))
        if count * x.dtype.itemsize + math.ceil(x.size / 8) < x.nbytes:
            values = _planes(x.reshape(-1)[kept])
            bits, gaps = np.packbits(kept), _gaps(kept)
            # Which index deflates smaller depends on the density and the pattern (i.i.d.
            # bits favour gaps below about 12% kept, blocks and N:M favour bits): measure.
            if _deflated_size(gaps) < _deflated_size(bits):
                entry["kind"] = "gaps"
                return [(f"gaps_{i}", gaps), (f"values_{i}", values)]
            entry["kind"] = "bitmap"
            return [(f"bits_{i}", bits), (f"values_{i}", values)]
    entry["kind"] = "dense"
    return [(f"dense_{i}", _planes(x))]


def _write_member(zf: zipfile.ZipFile, name: str, a: np.ndarray) -> None:
    # A fixed timestamp: the same params give the same bytes.
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=a.nbytes > 2**30) as f:
        np.lib.format.write_array(f, a, allow_pickle=False)


def _write(file: Any, leaves: list[tuple[str, np.ndarray]]) -> None:
    header = []
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for i, (path, x) in enumerate(leaves):
            entry = {"path": path, "shape": list(x.shape), "dtype": str(x.dtype)}
            for name, a in _encode(i, x, entry):
                _write_member(zf, name, a)
            header.append(entry)
        meta = {"format": _FORMAT, "version": _VERSION, "leaves": header}
        _write_member(zf, "header", np.frombuffer(json.dumps(meta).encode(), np.uint8))


def save_sparse(file: str | os.PathLike | io.IOBase, params: Params) -> None:
    """Saves ``params`` compactly and atomically: float leaves as their non-zeros and where.

    The file is a zip of uint8 ``.npy`` arrays that ``numpy.load(file, allow_pickle=False)``
    reads (nothing is pickled), deflate-compressed, holding for each leaf:

    * a float leaf whose non-zeros are few enough to save space (``count·itemsize + size/8 <
      nbytes``): its non-zero values and where they are, either as one bit per entry
      (``np.packbits(x != 0)``) or as the lengths of the runs of zeros between them, one byte
      per run (``255`` = 255 zeros and no value) — whichever deflates smaller; the bits win
      for dense or structured masks, the runs below about 12% kept at random;
    * any other leaf: all its values;

    values stored as their raw bytes in byte planes (all first bytes, then all second bytes,
    ...), which deflate packs better than interleaved bytes; and a JSON header with each
    leaf's ``/``-joined path, shape, dtype and encoding (format version 2). At 90% sparsity a
    float32 weight costs ``0.1·4`` bytes of values (about 10% less once deflated) and, once
    deflated, close to the mask's entropy ``H(0.1)/8 ≈ 0.06`` bytes for the positions, against
    4 bytes dense. Loading (:func:`load_sparse`) is bit-exact, NaN payloads included, except
    that the zeros of a leaf stored sparse are not stored: a ``-0.0`` there loads as ``+0.0``.
    A leaf with a non-native byte order is saved (and loads) in the native one; sub-byte
    values (int4, float4_e2m1fn, ...) in their one canonical byte pattern.

    A file name is written atomically: a temporary file in the same folder is written, synced
    to the disk and renamed over ``file``, so if saving fails for any reason the previous
    file is intact (a killed process may leave the temporary ``.<name>.<random>.tmp``).
    Like ``numpy.savez``, a ``.npz`` suffix is added to a file name without one. A file
    object is written in place.

    Args:
      file: a file name or a writable binary file object.
      params: a pytree of arrays (flax.nnx ``Variable`` wrappers are read as their value).

    Raises:
      ValueError: if two leaves have the same path.
      TypeError: if a leaf's dtype cannot be loaded back (strings, objects, datetimes,
        structured or raw void dtypes); the error names the leaf's path and dtype. Nothing
        is written then.
      OSError: if the file cannot be written; a file name's previous contents are kept.

    Examples:
      >>> import io, jax.numpy as jnp
      >>> f = io.BytesIO()
      >>> save_sparse(f, {"w": jnp.array([[0.0, 2.0], [0.0, 0.0]], jnp.bfloat16)})
      >>> _ = f.seek(0)
      >>> w = load_sparse(f)["w"]
      >>> w.dtype.name, w.astype("float32").tolist()
      ('bfloat16', [[0.0, 2.0], [0.0, 0.0]])
    """
    # Everything is checked before the file is touched.
    leaves: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for path, leaf in flat_leaves(params):
        if path in seen:
            raise ValueError(f"two leaves share the path {path!r}; paths must be unique to save")
        seen.add(path)
        x = np.asarray(leaf)
        reason = _unsupported(x.dtype)
        if reason is not None:
            raise TypeError(
                f"cannot save leaf {path!r} of dtype {x.dtype}: {reason}; supported: {_SUPPORTED}"
            )
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if _sub_byte(x.dtype):
            x = _canonical(x)
        leaves.append((path, x))
    if hasattr(file, "write"):
        _write(file, leaves)
        return
    name = os.fsdecode(os.fspath(file))
    if not name.endswith(".npz"):
        name += ".npz"
    with atomic_write(name) as f:
        _write(f, leaves)


# ----- validated loading -----


def _corrupt(message: str) -> ValueError:
    return ValueError(f"corrupt jaxprune sparse file: {message}")


def _no_constant(name: str) -> Any:
    raise _corrupt(f"the header holds {name}")


def _dtype_from_name(name: Any) -> np.dtype:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_<>|=]{1,40}", name):
        raise _corrupt(f"the dtype {name!r} is not a dtype name")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. numpy's deprecated aliases: refused too
            dtype = np.dtype(jnp.dtype(name))  # jnp.dtype knows bfloat16 and friends
    except Exception as e:  # noqa: BLE001 (numpy and jax raise several types here)
        raise _corrupt(f"unknown dtype {name!r}") from e
    if _unsupported(dtype) is not None:
        raise _corrupt(f"the dtype {name!r} is not an array of numbers")
    return dtype


def _parse_header(raw: bytes) -> tuple[int, list[tuple[str, tuple[int, ...], np.dtype, str]]]:
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError as e:
        raise _corrupt("the header nests too deep") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _corrupt(f"the header is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"not a jaxprune sparse file: format {fmt!r}")
    version = meta.get("version")
    if type(version) is not int or version not in _KINDS:
        raise ValueError(
            f"not a jaxprune sparse file this version reads: version {version!r} (reads "
            f"{sorted(_KINDS)})"
        )
    leaves = meta.get("leaves")
    if not isinstance(leaves, list):
        raise _corrupt("the header has no list of leaves")
    out, seen = [], set()
    for entry in leaves:
        if not isinstance(entry, dict):
            raise _corrupt(f"a leaf entry is {type(entry).__name__}, not an object")
        path, shape, kind = entry.get("path"), entry.get("shape"), entry.get("kind")
        if not isinstance(path, str):
            raise _corrupt(f"the path {path!r} is not a string")
        if path in seen:
            raise _corrupt(f"two leaves have the path {path!r}")
        seen.add(path)
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)
        ):
            raise _corrupt(f"leaf {path!r} has the shape {shape!r}")
        if math.prod(d for d in shape if d) >= 2**63:  # numpy cannot even describe it
            raise _corrupt(f"leaf {path!r} has the shape {shape!r}")
        if kind not in _KINDS[version]:
            raise _corrupt(f"leaf {path!r} has the unknown kind {kind!r}")
        out.append((path, tuple(shape), _dtype_from_name(entry.get("dtype")), kind))
    return version, out


_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what numpy and this module write


class _Members:
    """The arrays of a zip, read one at a time after checking their declared sizes."""

    def __init__(self, zf: zipfile.ZipFile, length: int):
        # Names compare without their .npy suffix: "a" and "a.npy" are the same array twice.
        self.names = [n.removesuffix(".npy") for n in zf.namelist()]
        if len(set(self.names)) != len(self.names):
            raise _corrupt("the zip holds two arrays of the same name")
        self.zf, self.length = zf, length
        self.infos = {info.filename: info for info in zf.infolist()}

    def read(self, key: str, *, size: int | None = None, at_most: int | None = None) -> np.ndarray:
        """The uint8 array ``key``: of exactly ``size`` bytes, or at most ``at_most``."""
        info = self.infos.get(f"{key}.npy")
        if info is None:
            raise _corrupt(f"the array {key!r} is missing")
        if info.flag_bits & 1 or info.compress_type not in _COMPRESSIONS:
            raise _corrupt(f"the array {key!r} is encrypted or compressed in an unknown way")
        # Declared sizes are checked against the bytes the file really has before any read:
        # deflate cannot expand more than 1032-fold, and a plain read of a declared size would
        # allocate that size at once.
        stored = info.compress_type == zipfile.ZIP_STORED
        most = info.compress_size if stored else 1032 * info.compress_size + 64
        if info.compress_size > self.length or info.file_size > most:
            raise _corrupt(f"the array {key!r} declares more bytes than the file holds")
        with self.zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f, _NPY_HEADER_LIMIT)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f, _NPY_HEADER_LIMIT)
            else:
                raise _corrupt(f"the array {key!r} has the .npy version {version}")
            if dtype != np.uint8 or len(shape) != 1:
                raise _corrupt(f"the array {key!r} is {dtype}{list(shape)}, not bytes")
            (count,) = shape
            if (size is not None and count != size) or (at_most is not None and count > at_most):
                want = size if size is not None else f"at most {at_most}"
                raise _corrupt(f"the array {key!r} has {count} bytes, the header implies {want}")
            if f.tell() + count != info.file_size:
                raise _corrupt(f"the array {key!r} declares {count} bytes in a different size")
            data = f.read(count)
            # Reading to the end of the member makes zipfile check its CRC.
            if len(data) != count or f.read(1):
                raise _corrupt(f"the array {key!r} does not hold the {count} bytes it declares")
        return np.frombuffer(data, np.uint8)


def _values(members: _Members, key: str, dtype: np.dtype, count: int, planes: bool) -> np.ndarray:
    raw = members.read(key, size=count * dtype.itemsize)
    x = _from_planes(raw, dtype, count) if planes else raw.view(dtype)
    if dtype == np.bool_ and np.any(raw > 1):
        raise _corrupt(f"the array {key!r} holds bools other than 0 and 1")
    if _sub_byte(dtype) and not np.array_equal(_canonical(x).view(np.uint8), x.view(np.uint8)):
        raise _corrupt(f"the array {key!r} holds bytes that are no {dtype} value")
    return x


def _decode(members: _Members) -> tuple[list[str], list[np.ndarray]]:
    if "header" not in members.names:
        raise ValueError("not a jaxprune sparse file: it has no header")
    version, leaves = _parse_header(members.read("header").tobytes())
    expected = {"header"}
    for i, (_, _, _, kind) in enumerate(leaves):
        if kind == "dense":
            expected.add(f"dense_{i}")
        else:
            expected |= {f"{_POSITIONS[kind]}_{i}", f"values_{i}"}
    found = set(members.names)
    if found != expected:
        raise _corrupt(
            f"missing arrays {sorted(expected - found)}, unexpected arrays "
            f"{sorted(found - expected)}"
        )
    planes = version >= 2
    paths, out = [], []
    for i, (path, shape, dtype, kind) in enumerate(leaves):
        # Every size below is checked against the stored arrays before anything of the
        # header's size is allocated: a header cannot make the loader allocate more than a
        # small multiple of the bytes the file really holds.
        size = math.prod(shape)
        if kind == "dense":
            x = _values(members, f"dense_{i}", dtype, size, planes)
            if not x.flags.writeable:  # a view of the bytes read (version 1, one-byte dtypes)
                x = x.copy()
        else:
            if kind == "gaps":
                positions = _positions_from_gaps(members.read(f"gaps_{i}", at_most=size), size)
                count = positions.size
            else:
                packed = members.read(f"bits_{i}", size=-(-size // 8))
                if size % 8 and packed[-1] & (0xFF >> (size % 8)):
                    raise _corrupt(f"the bits of leaf {path!r} set entries past its end")
                kept = np.unpackbits(packed, count=size).view(bool)
                positions, count = kept, int(np.count_nonzero(kept))
            values = _values(members, f"values_{i}", dtype, count, planes)
            if np.any(values == 0):
                raise _corrupt(f"leaf {path!r} stores zeros among its non-zero values")
            x = np.zeros(size, dtype)
            x[positions] = values
        paths.append(path)
        out.append(x.reshape(shape))
    return paths, out


# What zipfile, zlib and numpy's .npy reader raise on damaged bytes, besides ValueError.
_DAMAGE = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    struct.error,
    RuntimeError,  # NotImplementedError and RecursionError included
    OverflowError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)


def _read(file: Any) -> tuple[list[str], list[np.ndarray]]:
    with contextlib.ExitStack() as stack:
        if not hasattr(file, "read"):
            if not isinstance(file, str | bytes | os.PathLike):  # open(3) would read fd 3
                raise TypeError(
                    f"file must be a file name or a readable binary file object, not "
                    f"{type(file).__name__}"
                )
            file = stack.enter_context(open(file, "rb"))  # a missing file stays an OSError
        try:
            start = file.tell()
            length = file.seek(0, os.SEEK_END)
            file.seek(start)
            with zipfile.ZipFile(file) as zf:
                return _decode(_Members(zf, length))
        except _DAMAGE as e:
            raise ValueError(f"not a readable jaxprune sparse file: {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")  # pragma: no cover


def _nest(paths: list[str], arrays: list[np.ndarray]) -> Any:
    if paths == [""]:
        return arrays[0]  # the whole tree was one array
    root: dict[str, Any] = {}
    for path, x in zip(paths, arrays, strict=True):
        *parents, name = path.split("/")
        node = root
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot nest {path!r}: {key!r} is both a leaf and a subtree")
        if name in node:
            raise ValueError(f"cannot nest {path!r}: the path is a leaf and a subtree")
        node[name] = x
    return root


def load_sparse(file: str | os.PathLike | io.IOBase, like: Params | None = None) -> Params:
    """Loads params saved by :func:`save_sparse`, bit-exact (sparse leaves' ``-0.0`` as ``+0.0``).

    Files of format versions 1 and 2 load. The file is validated before it is trusted, so a
    damaged or hostile file gives a ``ValueError``, never another exception, a crash or a huge
    allocation: the zip and every array's checksum; arrays are uint8 ``.npy`` (nothing is
    unpickled), stored plainly or deflated, with no missing, extra or duplicate names; the
    JSON header (format, version, a unique string path per leaf, a shape of at most 64
    non-negative integers, a dtype of numbers, a known kind); and every leaf's shape against
    the sizes of its stored arrays (``size·itemsize`` bytes of values for a dense leaf,
    ``ceil(size/8)`` bytes of bits with no bit set past the end, gaps that cover exactly the
    leaf, one non-zero value per kept entry, bools of 0 or 1) before anything of the size the
    header claims is allocated.

    Args:
      file: a file name or a readable binary file object.
      like: a pytree to restore into (e.g. freshly initialised params, or a tree of
        ``jax.ShapeDtypeStruct``): the saved leaves are matched to its leaves by path and must
        have their shapes and dtypes. ``None``: nested dicts built from the paths (a path
        ``Dense_0/kernel`` becomes ``{"Dense_0": {"kernel": ...}}``; list indices become
        string keys).

    Returns:
      The params, as NumPy arrays of the saved dtypes (``jax.device_put`` moves them to a
      device).

    Raises:
      ValueError: if the file is not a jaxprune sparse file of a version this reads, is
        truncated or damaged, fails any check above, or its leaves do not match ``like``
        (missing or extra paths, other shapes or dtypes).
      OSError: if a file name cannot be opened (e.g. ``FileNotFoundError``).
      TypeError: if ``file`` is neither a file name nor a file object.

    Examples:
      >>> import io, jax.numpy as jnp
      >>> f = io.BytesIO()
      >>> save_sparse(f, {"layer": {"w": jnp.array([0.0, -1.5]), "b": jnp.int32(3)}})
      >>> _ = f.seek(0)
      >>> loaded = load_sparse(f)
      >>> {k: (x.dtype.name, x.tolist()) for k, x in loaded["layer"].items()}
      {'b': ('int32', 3), 'w': ('float32', [0.0, -1.5])}
    """
    paths, arrays = _read(file)
    if like is None:
        return _nest(paths, arrays)
    saved = dict(zip(paths, arrays, strict=True))
    flat = flat_leaves(like)
    like_paths = [p for p, _ in flat]
    missing = [p for p in like_paths if p not in saved]
    extra = [p for p in paths if p not in set(like_paths)]
    if missing or extra:
        raise ValueError(
            f"the saved leaves do not match like: missing from the file {missing}, "
            f"in the file but not in like {extra}"
        )
    out = []
    for path, leaf in flat:
        x = saved[path]
        want_shape, want_dtype = tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", x.dtype))
        if x.shape != want_shape or x.dtype != want_dtype:
            raise ValueError(
                f"leaf {path!r} was saved as {x.dtype}{list(x.shape)}, but like has "
                f"{want_dtype}{list(want_shape)}"
            )
        out.append(x)
    return trees.rebuild(like, out)


__all__ = ["load_sparse", "save_sparse", "strip", "to_bcoo"]
