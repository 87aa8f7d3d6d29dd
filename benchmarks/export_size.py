"""File size of ``jaxprune.save_sparse`` against numpy's dense files, side by side.

Two models with random-normal weights (He scaling), magnitude-pruned per layer with
``jaxprune.prune_weights`` (biases stay dense):

* an MLP 784-300-100-10 (266,610 parameters);
* a small CNN for 28x28x1 images: conv 3x3 1→32, conv 3x3 32→64 (each followed by a 2x2
  pool), dense 3136→128, dense 128→10 (421,642 parameters).

For each model, dtype (float32, bfloat16) and sparsity (50/80/90/95%) the script writes, in
memory and in one process, ``jaxprune.save_sparse`` of the pruned params, ``np.savez_compressed``
of the same params as dense arrays and ``np.savez`` uncompressed, checks that ``load_sparse``
gives the params back bit for bit, and prints the sizes (for ``save_sparse``, also the shares
of its bytes spent on the non-zero values and on their positions) and the ratios
``savez_compressed / save_sparse`` and ``savez / save_sparse`` (bigger is better for
``save_sparse``). Random weights are the worst case for compression: trained weights whose
pruned positions line up (dead inputs, whole rows) compress at least as well.

Usage::

    python benchmarks/export_size.py          # a few seconds
"""

from __future__ import annotations

import io
import platform
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp
from jaxprune._src.export import load_sparse, save_sparse

SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def he(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[:-1]))
    return rng.normal(scale=np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)


def mlp(rng: np.random.Generator) -> dict:
    sizes = (784, 300, 100, 10)
    return {
        f"Dense_{i}": {"kernel": he(rng, (a, b)), "bias": 0.01 * he(rng, (b,))}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }


def cnn(rng: np.random.Generator) -> dict:
    return {
        "Conv_0": {"kernel": he(rng, (3, 3, 1, 32)), "bias": 0.01 * he(rng, (32,))},
        "Conv_1": {"kernel": he(rng, (3, 3, 32, 64)), "bias": 0.01 * he(rng, (64,))},
        "Dense_0": {"kernel": he(rng, (7 * 7 * 64, 128)), "bias": 0.01 * he(rng, (128,))},
        "Dense_1": {"kernel": he(rng, (128, 10)), "bias": 0.01 * he(rng, (10,))},
    }


def size_of(write) -> int:
    f = io.BytesIO()
    write(f)
    return f.getbuffer().nbytes


def raw(params: dict) -> list[np.ndarray]:
    # numpy has no bfloat16 of its own: its files get the same bytes as unsigned integers.
    return [
        (a := np.asarray(x)).view(np.dtype(f"u{a.dtype.itemsize}")) for x in jax.tree.leaves(params)
    ]


def row(name: str, dtype: str, sparsity: float, params: dict) -> dict:
    pruned, _ = jp.prune_weights(params, sparsity)
    pruned = jax.tree.map(lambda x: jnp.asarray(x, dtype), pruned)
    f = io.BytesIO()
    save_sparse(f, pruned)
    f.seek(0)
    loaded = load_sparse(f, like=pruned)
    for got, want in zip(raw(loaded), raw(pruned), strict=True):
        if not np.array_equal(got, want):
            raise AssertionError(f"{name} {dtype} {sparsity}: load_sparse is not bit-exact")
    arrays = raw(pruned)
    # What the file is made of: compressed bytes of the non-zero values, of their positions
    # (bits or gaps) and of the leaves stored whole (biases).
    with zipfile.ZipFile(f) as zf:
        part = {"values": 0, "bits": 0, "gaps": 0, "dense": 0, "header": 0}
        for info in zf.infolist():
            part[info.filename.split("_")[0].removesuffix(".npy")] += info.compress_size
    return {
        "values": part["values"],
        "index": part["bits"] + part["gaps"],
        "model": name,
        "dtype": dtype,
        "sparsity": sparsity,
        "params": sum(a.size for a in arrays),
        "sparse": f.getbuffer().nbytes,
        "compressed": size_of(lambda f: np.savez_compressed(f, *arrays)),
        "savez": size_of(lambda f: np.savez(f, *arrays)),
    }


def run() -> list[dict]:
    rng = np.random.default_rng(0)
    models = {"MLP 784-300-100-10": mlp(rng), "CNN 2 conv + 2 dense": cnn(rng)}
    return [
        row(name, dtype, s, params)
        for name, params in models.items()
        for dtype in ("float32", "bfloat16")
        for s in SPARSITIES
    ]


def main() -> None:
    print(f"jax {jax.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    head = (
        f"{'model':<20} {'dtype':<8} {'sparsity':>8} {'params':>8} {'save_sparse':>12} "
        f"{'(values':>8} {'index)':>7} "
        f"{'savez_compr.':>12} {'savez':>10} {'compr./sparse':>13} {'savez/sparse':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in run():
        print(
            f"{r['model']:<20} {r['dtype']:<8} {r['sparsity']:>8.0%} {r['params']:>8,} "
            f"{r['sparse'] / 1e3:>10.1f}kB {r['values'] / r['sparse']:>8.0%} "
            f"{r['index'] / r['sparse']:>7.0%} {r['compressed'] / 1e3:>10.1f}kB "
            f"{r['savez'] / 1e3:>8.1f}kB {r['compressed'] / r['sparse']:>12.2f}x "
            f"{r['savez'] / r['sparse']:>11.2f}x"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
