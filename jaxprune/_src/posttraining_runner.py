r"""One-shot pruning of a whole trained model from calibration batches.

:func:`prune_oneshot` finds the layers of any JAX function ``fn(params, batch)`` from its
jaxpr, with no model-specific hooks (Flax linen, Flax NNX through ``nnx.split``/``merge``,
Equinox and plain functions alike):

1. ``jax.make_jaxpr(fn)(params, batch)`` is walked, inlining the sub-jaxprs of ``jit``,
   ``closed_call``, ``remat`` and ``custom_jvp``/``custom_vjp`` calls. A params leaf read
   (possibly through ``convert_element_type`` or a 2-D ``transpose``) by a ``dot_general``
   as one operand, with one contracted axis and no batch axes, is a *linear layer*; the axis
   it contracts is its input axis (axis 0 of a Flax ``(in, out)`` kernel, axis 1 of an
   Equinox ``(out, in)`` weight). A params leaf read as the kernel of a
   ``conv_general_dilated`` (one feature group, one batch group) is a *convolution layer*:
   its output axis is the kernel's output-feature axis, and its inputs are all the others
   (spatial and input features, in the kernel's own order).
2. A small interpreter evaluates the jaxpr on a calibration batch inside ``jax.jit`` and
   stops once it has seen the wanted layers, recording their other operand: the layer's
   inputs, flattened to ``(tokens, in)`` (for a convolution, the input unfolded into patches
   by a convolution with an identity kernel of the same geometry). Their statistics
   :math:`\sum x x^\top` (SparseGPT) or :math:`\sum x^2` (Wanda, OWL) are accumulated in
   float32 over all batches, on one device or data-parallel over a mesh (each device sums
   its shard of every batch; one all-reduce per statistic and layer at the end).
3. Layers are pruned in the order the function evaluates them, one layer's (or one block's)
   statistics in memory at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxprune._src import oneshot
from jaxprune._src import posttraining as pt
from jaxprune._src.base import Array, Masks, Params, is_float_array, path_str

_METHODS = ("magnitude", "wanda", "sparsegpt")

# Higher-order primitives that call one jaxpr on exactly their operands (forward semantics
# only, which is all one-shot calibration needs), and the parameter that holds it.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
# Primitives whose inputs are seen once per iteration or branch: a layer inside them has no
# single input matrix, so its leaves are refused by name.
_LOOPS = ("scan", "while", "cond", "shard_map")


@dataclasses.dataclass(frozen=True)
class _Origin:
    """A value that is params leaf ``leaf``, possibly cast, and transposed if ``transposed``."""

    leaf: int
    transposed: bool = False


@dataclasses.dataclass(frozen=True)
class _Site:
    """One operation that reads params leaf ``leaf`` as a layer.

    ``out_axis`` is the leaf's axis of output units; all its other axes are inputs (a rank-2
    ``dot_general`` operand, or a ``conv_general_dilated`` kernel if ``conv``).
    """

    leaf: int
    out_axis: int
    conv: bool = False


class _Captured(Exception):  # noqa: N818 (control flow, not an error)
    """Raised once every wanted layer's inputs are recorded: the rest of ``fn`` is skipped."""


def _bind(eqn, invals: list[Any]) -> list[Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list[Any] = []
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    ctx = getattr(eqn, "ctx", None)
    if ctx is not None:
        with ctx.manager:
            out = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


class _Walk:
    """Evaluates a jaxpr, following params leaves to the operations that read them.

    ``targets``: site indices whose inputs are wanted; ``on_input(site, x)`` is called with
    each one's ``(tokens, in)`` input matrix, and once all are seen the walk raises
    :class:`_Captured` (the rest of the function is not evaluated).
    """

    def __init__(self, targets=(), on_input=None):
        self.sites: list[_Site] = []
        self.uses: dict[int, list[str]] = {}
        self.refused: dict[int, str] = {}  # leaf -> why its convolution cannot be unfolded
        self.targets = frozenset(targets)
        self.on_input = on_input
        self._seen = 0

    def _use(self, origin: _Origin, what: str) -> None:
        self.uses.setdefault(origin.leaf, []).append(what)

    def _capture(self, site: int, x: Array) -> None:
        self.on_input(site, x)
        self._seen += 1
        if self._seen == len(self.targets):
            raise _Captured()

    def run(self, jaxpr, consts, args, origins) -> tuple[list[Any], list[Any]]:
        env: dict[Any, Any] = {}
        orig: dict[Any, _Origin] = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, a, o in zip(jaxpr.invars, args, origins):
            env[v] = a
            if o is not None:
                orig[v] = o
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inorig = [None if isinstance(v, Literal) else orig.get(v) for v in eqn.invars]
            name = eqn.primitive.name
            outorig: list[_Origin | None] = [None] * len(eqn.outvars)
            sub = eqn.params.get(_CALLS.get(name, ""), None)
            sub_jaxpr = getattr(sub, "jaxpr", sub)
            if sub is not None and len(getattr(sub_jaxpr, "invars", ())) == len(invals):
                outs, outorig = self.run(sub_jaxpr, getattr(sub, "consts", ()), invals, inorig)
            else:
                if any(inorig):
                    outorig = self._follow(eqn, name, invals, inorig)
                outs = _bind(eqn, invals)
            for v, val, o in zip(eqn.outvars, outs, outorig):
                env[v] = val
                if o is not None:
                    orig[v] = o
        return [read(v) for v in jaxpr.outvars], [
            None if isinstance(v, Literal) else orig.get(v) for v in jaxpr.outvars
        ]

    def _follow(self, eqn, name, invals, inorig) -> list[_Origin | None]:
        """Records how params leaves are read by ``eqn``; the origins of its outputs."""
        o = inorig[0]
        if name == "convert_element_type" or name == "copy" or name == "copy_p":
            return [o]
        if name == "transpose" and len(eqn.params["permutation"]) == 2:
            if tuple(eqn.params["permutation"]) == (1, 0):
                return [dataclasses.replace(o, transposed=not o.transposed)]
            return [o]
        if name == "dot_general":
            self._dot(eqn, invals, inorig)
            return [None]
        if name == "conv_general_dilated":
            self._conv(eqn, invals, inorig)
            return [None]
        what = name if name not in _LOOPS else f"{name} (a loop or branch)"
        for oo in inorig:
            if oo is not None:
                self._use(oo, what)
        return [None] * len(eqn.outvars)

    def _dot(self, eqn, invals, inorig) -> None:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ws = [i for i in (0, 1) if inorig[i] is not None]
        if len(ws) != 1 or lb or rb or len(lc) != 1 or eqn.invars[ws[0]].aval.ndim != 2:
            for i in ws:
                self._use(inorig[i], "dot_general (not a plain linear layer)")
            return
        wi = ws[0]
        origin = inorig[wi]
        w_axis = int((lc, rc)[wi][0])
        x_axis = int((lc, rc)[1 - wi][0])
        in_axis = w_axis if not origin.transposed else 1 - w_axis
        site = len(self.sites)
        self.sites.append(_Site(origin.leaf, 1 - in_axis))
        self._use(origin, "dot_general")
        if site in self.targets:
            x = invals[1 - wi]
            x = jnp.moveaxis(x, x_axis, -1)
            self._capture(site, x.reshape(-1, x.shape[-1]))

    def _conv(self, eqn, invals, inorig) -> None:
        lhs_origin, origin = inorig[0], inorig[1]
        if lhs_origin is not None:
            self._use(lhs_origin, "conv_general_dilated (as its input)")
        if origin is None:
            return
        p = eqn.params
        grouped = [f"{k}={p[k]}" for k in ("feature_group_count", "batch_group_count") if p[k] != 1]
        if lhs_origin is not None or origin.transposed or grouped:
            self._use(origin, "conv_general_dilated (not a plain convolution)")
            if grouped:
                self.refused.setdefault(origin.leaf, ", ".join(grouped))
            return
        site = len(self.sites)
        self.sites.append(_Site(origin.leaf, int(p["dimension_numbers"].rhs_spec[0]), conv=True))
        self._use(origin, "conv_general_dilated")
        if site in self.targets:
            self._capture(site, _conv_patches(eqn, invals[0], invals[1].shape))


def _conv_patches(eqn, lhs: Array, kernel_shape: tuple[int, ...]) -> Array:
    """The ``(tokens, in)`` input matrix of a convolution: its input unfolded into patches.

    Feature ``f`` of the result is entry ``f`` of the kernel's input axes flattened in the
    kernel's own order (every axis but the output-feature one): the patches come from the same
    convolution (strides, padding, dilations, layout) with an identity kernel, exact in any
    dtype (each output is one input times 1).
    """
    p = eqn.params
    dn = p["dimension_numbers"]
    out_axis = dn.rhs_spec[0]
    in_shape = tuple(d for i, d in enumerate(kernel_shape) if i != out_axis)
    n_in = math.prod(in_shape)
    eye = jnp.eye(n_in, dtype=lhs.dtype).reshape(*in_shape, n_in)
    x = lax.conv_general_dilated(
        lhs,
        jnp.moveaxis(eye, -1, out_axis),
        window_strides=p["window_strides"],
        padding=p["padding"],
        lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"],
        dimension_numbers=dn,
        precision=lax.Precision.HIGHEST,
    )
    return jnp.moveaxis(x, dn.out_spec[1], -1).reshape(-1, n_in)


def _walk_fn(fn, n_params: int, walk: _Walk) -> Callable[..., Any]:
    """``(param_leaves, batch) -> outputs`` through the interpreter."""

    def run(param_leaves, treedef, batch):
        params = jax.tree_util.tree_unflatten(treedef, param_leaves)
        closed = jax.make_jaxpr(fn)(params, batch)
        args = [*param_leaves, *jax.tree_util.tree_leaves(batch)]
        origins = [_Origin(i) if i < n_params else None for i in range(len(args))]
        return walk.run(closed.jaxpr, closed.consts, args, origins)[0]

    return run


def _analyse(fn, params, batch) -> _Walk:
    flat, treedef = jax.tree_util.tree_flatten(params)
    walk = _Walk()
    run = _walk_fn(fn, len(flat), walk)
    jax.eval_shape(lambda p, b: run(p, treedef, b), flat, batch)
    return walk


def _f32_sums(x: Array, hessian: bool) -> tuple[Array | None, Array, Array]:
    """``(Σ xᵀx or None, Σ x², rows)`` of a ``(tokens, in)`` input matrix, in float32."""
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=0)
    rows = jnp.asarray(x.shape[0], jnp.float32)
    if not hessian:
        return None, sq, rows
    return jnp.matmul(x.T, x, precision=lax.Precision.HIGHEST), sq, rows


# A hook for benchmarks/oneshot.py: called with no argument after every calibration batch is
# added, after every group's statistics are complete, once a layer's Hessian is formed and after
# every layer is pruned, the points where the most arrays are alive (the benchmark samples
# ``jax.live_arrays()`` there).
_probe: Callable[[], None] | None = None


def _probe_point() -> None:
    if _probe is not None:
        _probe()


# Compiled calibration passes, reused across prune_oneshot calls on the same function (a sweep
# over methods or sparsities compiles each layer's truncated forward pass once, not once per
# call). The cache holds the passes of the last few functions (and so ``fn`` itself).
_CACHED_FUNCTIONS = 4
_compiled: collections.OrderedDict[Any, dict] = collections.OrderedDict()


def _cached(fn: Any, key: tuple, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """``build()``, or what an earlier call built for ``(fn, key)``; unhashable ``fn``: no cache."""
    try:
        hash((fn, key))
    except TypeError:  # e.g. a bound method of an unhashable (mutable dataclass) module
        return build()
    passes = _compiled.pop(fn, None) or {}
    _compiled[fn] = passes
    while len(_compiled) > _CACHED_FUNCTIONS:
        _compiled.popitem(last=False)
    if key not in passes:
        passes[key] = build()
    return passes[key]


def _site_stats(fn, n_params, sites, hessian, treedef, dp):
    """A compiled ``(param_leaves, batch) -> [(Σ xᵀx or None, Σ x², rows) per site]``.

    One truncated forward pass computes the statistics of all ``sites`` (one layer, or the
    layers of one block). With ``dp = (mesh, axes)`` it runs data-parallel (see
    :func:`_build_site_stats`).
    """
    return _cached(
        fn,
        ("site", n_params, sites, hessian, treedef, dp),
        lambda: _build_site_stats(fn, n_params, sites, hessian, treedef, dp),
    )


def _build_site_stats(fn, n_params, sites, hessian, treedef, dp):

    def stats(param_leaves, batch):
        out: dict[int, tuple] = {}
        walk = _Walk(targets=sites, on_input=lambda s, x: out.__setitem__(s, _f32_sums(x, hessian)))
        try:
            _walk_fn(fn, n_params, walk)(param_leaves, treedef, batch)
        except _Captured:
            pass
        if len(out) != len(sites):  # pragma: no cover
            raise AssertionError("a layer was not reached")
        return [out[s] for s in sites]

    if dp is None:
        return jax.jit(stats)
    mesh, axes = dp

    # Each device sums its shard of the batch; the per-device sums are returned stacked along
    # a leading axis sharded over ``axes`` and added up over the batches where they lie, with
    # no communication. :func:`_all_reduce` sums them once at the end.
    def local(param_leaves, batch):
        return jax.tree.map(lambda a: a[None], stats(param_leaves, batch))

    return jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P(axes), check_vma=False)
    )


def _all_norms(fn, n_params, sites, treedef, dp):
    """A compiled ``(param_leaves, batch) -> [(None, Σ x², rows) per site]`` (for OWL)."""
    return _cached(
        fn,
        ("norms", n_params, sites, treedef, dp),
        lambda: _build_all_norms(fn, n_params, sites, treedef, dp),
    )


def _build_all_norms(fn, n_params, sites, treedef, dp):
    return _build_site_stats(fn, n_params, sites, False, treedef, dp)


@functools.lru_cache(maxsize=8)
def _all_reduce(dp):
    """Sums per-device statistics: one ``psum`` (all-reduce) per statistic."""
    mesh, axes = dp

    def total(tree):
        return jax.tree.map(lambda a: lax.psum(a[0], axes), tree)

    return jax.jit(
        jax.shard_map(total, mesh=mesh, in_specs=P(axes), out_specs=P(), check_vma=False)
    )


def _accumulate(stats_fn, source, batches, dp) -> list[tuple]:
    """The statistics of ``stats_fn`` summed over all batches (and devices)."""
    acc = None
    put = (lambda b: b) if dp is None else _batch_placer(dp)
    for batch in batches:
        out = stats_fn(source, put(batch))
        acc = out if acc is None else jax.tree.map(jnp.add, acc, out)
        del out
        _probe_point()
    return acc if dp is None else _all_reduce(dp)(acc)


def _batch_placer(dp):
    sharding = NamedSharding(dp[0], P(dp[1]))
    return lambda batch: jax.device_put(batch, sharding)


def _where(path) -> str:
    return repr(path_str(path)) if path else "the batch"


def _check_batches(batches: list[Any]) -> None:
    """Empty input, batches that differ in structure, dtype or shape (beyond axis 0), NaN."""
    if not batches:
        raise ValueError("calibration_batches is empty; pass at least one batch")
    first, first_def = jax.tree_util.tree_flatten_with_path(batches[0])
    for b, batch in enumerate(batches):
        for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
            if np.size(x) == 0:
                raise ValueError(
                    f"calibration_batches[{b}]: {_where(path)} is empty (shape {np.shape(x)}): "
                    "a batch must hold at least one example"
                )
    for b, batch in enumerate(batches[1:], 1):
        flat, tdef = jax.tree_util.tree_flatten_with_path(batch)
        if tdef != first_def:
            raise ValueError(
                f"calibration_batches[{b}] has structure {tdef}, but calibration_batches[0] has "
                f"{first_def}; every batch must be the same pytree"
            )
        for (path, x), (_, x0) in zip(flat, first):
            shape, shape0 = np.shape(x), np.shape(x0)
            dtype, dtype0 = jnp.result_type(x), jnp.result_type(x0)
            if len(shape) != len(shape0) or shape[1:] != shape0[1:]:
                raise ValueError(
                    f"calibration_batches[{b}]: {_where(path)} has shape {shape}, but "
                    f"{shape0} in calibration_batches[0]; batches may differ only in their "
                    "leading (batch) axis"
                )
            if dtype != dtype0:
                raise ValueError(
                    f"calibration_batches[{b}]: {_where(path)} has dtype {dtype}, but {dtype0} "
                    "in calibration_batches[0]"
                )
    for b, batch in enumerate(batches):
        for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
            if is_float_array(leaf) and not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(
                    f"calibration_batches[{b}] has NaN or inf in {path_str(path) or 'the batch'}"
                )


def _data_parallel(mesh, batches) -> tuple[Mesh, tuple] | None:
    """``(mesh, batch axes)`` for data-parallel calibration, or ``None`` for one device.

    An explicit ``mesh`` splits the batch over all its axes; without one, a first batch whose
    leaves all carry one ``NamedSharding`` splitting their axis 0 gives the mesh and axes.
    """
    if mesh is None:
        mesh, axes = _mesh_of(batches[0])
        if mesh is None:
            return None
    else:
        axes = tuple(mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    for b, batch in enumerate(batches):
        for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
            shape = np.shape(x)
            if not shape or shape[0] % shards:
                raise ValueError(
                    f"mesh: calibration_batches[{b}]: {_where(path)} has shape {shape}; "
                    f"calibration splits axis 0 of every batch leaf over the {shards} devices "
                    f"of mesh axes {axes}, so it must be a multiple of {shards}"
                )
    return mesh, axes


def _mesh_of(batch) -> tuple[Mesh | None, tuple]:
    meshes, specs = set(), set()
    for x in jax.tree_util.tree_leaves(batch):
        sharding = getattr(x, "sharding", None)
        if not isinstance(sharding, NamedSharding) or not len(sharding.spec):
            return None, ()
        first = sharding.spec[0]
        if first is None or not isinstance(sharding.mesh, Mesh):
            return None, ()
        meshes.add(sharding.mesh)
        specs.add(first if isinstance(first, tuple) else (first,))
    if len(meshes) != 1 or len(specs) != 1:
        return None, ()
    return meshes.pop(), specs.pop()


def _select(paths, leaves, sites, uses, refused, layers) -> list[int]:
    """Indices of the site of every selected layer, in evaluation order; refuses bad leaves."""
    by_leaf: dict[int, list[int]] = {}
    for s, site in enumerate(sites):
        by_leaf.setdefault(site.leaf, []).append(s)
    # Float leaves of rank >= 2 read inside a loop: a 2-D kernel, a stacked (L, in, out)
    # kernel of nn.scan, a convolution kernel. None can be calibrated as one layer, and none is
    # left out silently: each is refused by name unless layers= excludes it.
    looped = {
        i
        for i, u in uses.items()
        if any("loop" in w for w in u) and is_float_array(leaves[i]) and np.ndim(leaves[i]) >= 2
    }
    candidates = sorted(set(by_leaf) | looped | set(refused))
    # Float leaves of rank >= 2 that a dot_general or a convolution reads in another way than
    # a layer (a rank-3 DenseGeneral or attention kernel, a kernel as a convolution's input):
    # they stay dense, and prune_oneshot says so.
    other = sorted(
        i
        for i, u in uses.items()
        if i not in by_leaf
        and i not in looped
        and i not in refused
        and is_float_array(leaves[i])
        and np.ndim(leaves[i]) >= 2
        and any("dot_general" in w or "conv_general_dilated" in w for w in u)
    )
    if layers is not None:
        rx = layers
        chosen = [i for i in candidates if rx.search(paths[i])]
        other = [i for i in other if rx.search(paths[i])]
        if not chosen:
            also = (
                f"; it matches leaves read otherwise (not as a 2-D kernel or a plain "
                f"convolution kernel), which cannot be pruned: {_uses_of(other, paths, uses)}"
                if other
                else ""
            )
            raise ValueError(
                f"layers={rx.pattern!r} matches no linear layer; the leaves read by a "
                f"dot_general or as a convolution kernel are {[paths[i] for i in candidates]}"
                + also
            )
    else:
        chosen = candidates
        if not chosen:
            raise ValueError(
                "fn has no linear layer (no dot_general reads a 2-D params leaf, no "
                "conv_general_dilated a params kernel)"
            )
    for i in chosen:
        if not is_float_array(leaves[i]):
            raise TypeError(f"linear layer {paths[i]!r} is not a float array")
        if i in refused:
            raise ValueError(
                f"{paths[i]!r} is the kernel of a conv_general_dilated with {refused[i]} (a "
                "grouped or depthwise convolution): its inputs cannot be unfolded into one "
                "(tokens, in) matrix for all output features; exclude it with layers="
            )
        u = uses.get(i, [])
        if i in looped:
            raise ValueError(
                f"{paths[i]!r} is read inside a scan/while/cond; its inputs differ per "
                "iteration, so it cannot be calibrated as one layer; exclude it with layers="
            )
        if len(u) != 1:
            counts = {w: u.count(w) for w in u}
            raise ValueError(
                f"{paths[i]!r} is read by {len(u)} operations {counts} (tied weights?); a layer "
                "must be read by exactly one dot_general; exclude it with layers="
            )
    if other:
        warnings.warn(
            "prune_oneshot leaves these leaves dense: they are read by a dot_general or a "
            "convolution, but not as a 2-D kernel or a plain convolution kernel (e.g. a "
            "DenseGeneral or attention kernel of rank 3), so they have no (in, out) layer to "
            f"calibrate: {_uses_of(other, paths, uses)}",
            stacklevel=3,
        )
    return sorted(by_leaf[i][0] for i in chosen)


def _uses_of(idx: list[int], paths: list[str], uses: dict[int, list[str]]) -> dict[str, list]:
    return {paths[i]: sorted(set(uses[i])) for i in idx}


def _check_method_args(method, sparsity, n_m, owl) -> tuple[float | None, Any]:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if sparsity is not None and n_m is not None:
        raise ValueError(
            f"pass either sparsity or n_m=(n, m), not both; got sparsity={sparsity!r}, n_m={n_m!r}"
        )
    if not isinstance(owl, bool):
        raise TypeError(f"owl must be a bool, got {owl!r}")
    if n_m is not None:
        if owl:
            raise ValueError("owl=True sets per-layer sparsities and cannot be used with n_m")
        return None, pt.check_n_m(n_m)
    return pt.check_static_sparsity(0.5 if sparsity is None else sparsity), None


def _as_matrix(w: Array, site: _Site) -> Array:
    """The leaf as an ``(in, out)`` matrix: output axis last, the other axes flattened."""
    w = jnp.moveaxis(w, site.out_axis, -1)
    return w.reshape(-1, w.shape[-1])


def _from_matrix(m: Array, site: _Site, shape: tuple[int, ...]) -> Array:
    moved = tuple(d for i, d in enumerate(shape) if i != site.out_axis) + (shape[site.out_axis],)
    return jnp.moveaxis(m.reshape(moved), -1, site.out_axis)


def _inputs(shape: tuple[int, ...], site: _Site) -> int:
    return math.prod(shape) // shape[site.out_axis]


def _prune_layer(method, w, site, stats, sparsity, n_m, sparsegpt_kwargs):
    """Prunes one leaf; ``stats = (Σ xᵀx or None, Σ x², rows)``."""
    kernel = _as_matrix(w, site)
    if method == "magnitude":
        # The same implementation as prune_weights (N:M groups along the input axis).
        (new,), (mask,) = oneshot.magnitude_prune([kernel], sparsity, n_m=n_m, axes=[0])
    elif method == "wanda":
        mask = pt.wanda_mask(kernel, jnp.sqrt(stats[1]), None if n_m else sparsity, n_m=n_m)
        new = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
    else:
        xtx, rows = stats[0], stats[2]
        del stats  # the sum Σ xᵀx is freed once scaled: one Hessian alive at a time
        hessian = (2.0 / rows) * xtx
        del xtx
        _probe_point()
        new, mask = pt.sparsegpt_prune(
            kernel, hessian, None if n_m else sparsity, n_m=n_m, **sparsegpt_kwargs
        )
    return _from_matrix(new, site, w.shape), _from_matrix(mask, site, w.shape)


def _compile_regex(rule: Any, name: str) -> re.Pattern | None:
    if rule is None or isinstance(rule, re.Pattern):
        return rule
    if isinstance(rule, str):
        try:
            return re.compile(rule)
        except re.error as e:
            raise ValueError(f"{name} is not a valid regular expression: {e}") from e
    raise TypeError(f"{name} must be a regex string or compiled pattern, got {rule!r}")


def _groups(order, sites, paths, blocks) -> list[list[int]]:
    """The selected sites split into blocks of consecutive layers (default: one per layer)."""
    if blocks is None:
        return [[s] for s in order]
    groups: list[list[int]] = []
    keys: list[Hashable] = []
    for s in order:
        path = paths[sites[s].leaf]
        if isinstance(blocks, re.Pattern):
            found = blocks.search(path)
            key = found.group(0) if found else None
        else:
            key = blocks(path)
            try:
                hash(key)
            except TypeError as e:
                raise TypeError(
                    f"blocks must return a hashable block key (or None) for a layer path, got "
                    f"{key!r} for {path!r}"
                ) from e
        if key is not None and keys and keys[-1] == key:
            groups[-1].append(s)
            continue
        if key is not None and key in keys:
            raise ValueError(
                f"blocks: the layers of block {key!r} are not consecutive in evaluation order "
                f"({paths[sites[groups[-1][-1]].leaf]!r}, of another block, is evaluated "
                f"before {path!r}); a block must be a run of consecutive layers"
            )
        groups.append([s])
        keys.append(key)
    if isinstance(blocks, re.Pattern) and all(k is None for k in keys):
        raise ValueError(
            f"blocks={blocks.pattern!r} matches none of the layers "
            f"{[paths[sites[s].leaf] for s in order]}"
        )
    return groups


def _progress_bar(progress: bool, total: int, method: str):
    if not progress:
        return None
    try:
        from tqdm import tqdm  # noqa: PLC0415 (optional: not a run-time dependency)
    except ImportError:
        warnings.warn(
            "progress=True shows a bar only when tqdm is installed (pip install tqdm); "
            "pruning without one",
            stacklevel=3,
        )
        return None
    return tqdm(total=total, desc=f"prune_oneshot ({method})", unit="layer")


def prune_oneshot(
    fn: Callable[[Params, Any], Any],
    params: Params,
    calibration_batches: Iterable[Any],
    *,
    method: str = "magnitude",
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    layers: str | re.Pattern | None = None,
    blocks: str | re.Pattern | Callable[[str], Hashable] | None = None,
    sequential: bool = True,
    owl: bool = False,
    owl_threshold: float = 5.0,
    owl_lam: float = 0.08,
    block_size: int = 128,
    damping: float = 0.01,
    mesh: Mesh | None = None,
    progress: bool = False,
) -> tuple[Params, Masks]:
    r"""Prunes every linear and convolution layer of a trained model in one shot.

    The layers are found in the jaxpr of ``fn(params, batch)`` (a params leaf read by one
    ``dot_general``, or the kernel of one ``conv_general_dilated``; see the module notes),
    then pruned one by one in the order ``fn`` evaluates them:

    * ``"magnitude"``: the implementation of :func:`jaxprune.prune_weights` per layer
      (:func:`jaxprune.magnitude_mask`'s rule; calibration data only finds the layers), or
      :func:`jaxprune.nm_mask` along the input axis for ``n_m``.
    * ``"wanda"``: :func:`wanda_mask` with the layer's input norms
      :math:`\|X_i\|_2 = \sqrt{\sum_t x_{ti}^2}` over all calibration tokens.
    * ``"sparsegpt"``: :func:`sparsegpt_prune` with :math:`H = \tfrac{2}{N}\sum_t x_t
      x_t^\top`; kept weights are updated.

    A layer is an ``(in, out)`` matrix: for a dense weight, its input and output axes (a
    ``(out, in)`` weight, Equinox's or a transposed read, is pruned along its axis 1); for a
    convolution kernel, the output-feature axis, and as inputs all other axes (spatial and
    input features) flattened in the kernel's own order, e.g. ``in = h·w·c`` for Flax's
    ``(h, w, c, out)``. A convolution's inputs are its input unfolded into patches (the same
    strides, padding and dilations). Grouped and depthwise convolutions
    (``feature_group_count > 1``) and ``batch_group_count > 1`` are refused by name.

    With ``sequential=True`` (the reference codes' protocol) each layer is calibrated on the
    inputs it receives from the already-pruned earlier layers; with ``False``, on those of the
    dense model. ``blocks`` groups consecutive layers (e.g. the layers of one transformer
    block): with ``sequential=True`` all layers of a block are calibrated together, in one
    pass, on the inputs from the already-pruned earlier blocks (not on each other's pruned
    outputs), as the reference codes process a transformer block. With ``owl=True`` the
    per-layer sparsities are :func:`owl_sparsities` of the Wanda scores on the dense model,
    one outlier ratio per layer, or per block with ``blocks`` (the scores of a block's
    layers together, as in the reference), weighted by size, so that the total sparsity of
    the selected layers is ``sparsity``.

    Statistics are accumulated in float32; only one layer's (or one block's) statistics are
    held at a time. Each layer (or block) compiles one truncated forward pass; the compiled
    passes are kept (a small bounded cache), so calling again with the same ``fn`` (another
    method or sparsity) does not compile them again.

    **Several devices** (``mesh``, or a first batch sharded along its axis 0 by a
    ``NamedSharding``): data-parallel calibration. Every batch is split along axis 0 over the
    mesh axes (all of them for ``mesh=``; the batch's for a sharded batch), params are
    replicated, each device accumulates the statistics of its shards over all batches, and
    each statistic of each layer is summed over the devices by one all-reduce. ``fn`` must
    treat examples independently (no statistics over the batch, e.g. BatchNorm in training
    mode). Pruned leaves and their masks are returned with the sharding of the params given.

    Args:
      fn: any JAX function ``fn(params, batch)``, e.g. ``model.apply`` for linen.
      params: the trained parameters (a pytree).
      calibration_batches: an iterable of batches (read several times: it is made a list).
        All batches must be the same pytree with the same dtypes and shapes except the
        leading (batch) axis.
      method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
      sparsity: fraction pruned per layer, in ``[0, 1)``; default 0.5 unless ``n_m`` is given.
      n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs per output unit.
      layers: a regex searched in the ``/``-joined leaf paths (``params/Dense_0/kernel``) that
        selects which layers are pruned; default all.
      blocks: how to group layers: a regex searched in each layer's path, layers with the
        same matched text forming one block (``r"block_\d+/"``), or a callable ``path -> key``
        (layers with equal keys form one block); ``None`` (from either) makes a layer its own
        block. A block must be consecutive layers in evaluation order. Default: every layer
        is its own block.
      sequential: calibrate each layer (block) on the outputs of the pruned earlier ones.
      owl: per-layer (per-block) sparsities by outlier ratio (OWL); not with ``n_m``.
      owl_threshold: OWL's outlier threshold ``M`` (relative to the mean score).
      owl_lam: OWL's half-width ``λ`` of the sparsity range.
      block_size: SparseGPT's block size.
      damping: SparseGPT's relative damping.
      mesh: a :class:`jax.sharding.Mesh` to calibrate on data-parallel; default: the mesh of
        a first batch sharded along axis 0, else one device.
      progress: show a progress bar over the layers (with ``tqdm``, imported only then; a
        warning, and no bar, if it is not installed). Default off.

    Returns:
      ``(pruned_params, masks)``: params with pruned entries exactly 0 (and, for SparseGPT,
      updated kept weights), and masks shaped like params: bool arrays for the pruned leaves,
      scalar ``True`` elsewhere.

    Raises:
      ValueError: for an unknown method, a sparsity outside ``[0, 1)``, both ``sparsity`` and
        ``n_m``, an invalid ``n_m`` (or ``m`` not dividing a layer's inputs), ``owl`` with
        ``n_m``, no calibration batch, batches of different structure, dtypes or shapes
        (naming the batch), NaN or inf in the calibration data or in a layer's inputs, a
        ``layers`` or ``blocks`` regex that does not compile or matches no layer, blocks whose
        layers are not consecutive, a batch axis that the mesh does not divide, or a selected
        leaf that is read by more than one operation (tied weights), inside a
        scan/while/cond, or by a grouped convolution. A bad ``block_size``, ``damping``,
        ``owl_threshold`` or ``owl_lam`` is refused before any calibration, whatever the method.
      TypeError: for ``layers``/``blocks``/``mesh`` of the wrong type, a ``blocks`` callable
        returning an unhashable key, or a non-bool ``sequential``/``owl``/``progress``.

    Warns:
      UserWarning: naming the float leaves of rank >= 2 that a ``dot_general`` or a
        convolution reads, but not as a 2-D kernel or a plain convolution kernel (a rank-3
        ``DenseGeneral`` kernel, for one): they are left dense.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w1": jax.random.normal(jax.random.key(0), (4, 8)),
      ...           "w2": jax.random.normal(jax.random.key(1), (8, 2))}
      >>> def mlp(p, x):
      ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
      >>> batches = [jax.random.normal(jax.random.key(2), (16, 4))]
      >>> pruned, masks = prune_oneshot(mlp, params, batches, method="wanda", sparsity=0.5)
      >>> [int(masks[k].sum()) for k in ("w1", "w2")]
      [16, 8]

    References:
      Sun et al., *A Simple and Effective Pruning Approach for Large Language Models* (2024),
      https://arxiv.org/abs/2306.11695; Frantar, Alistarh, *SparseGPT* (2023),
      https://arxiv.org/abs/2301.00774; Yin et al., *Outlier Weighed Layerwise Sparsity* (2024),
      https://arxiv.org/abs/2310.05175
    """
    sparsity, n_m = _check_method_args(method, sparsity, n_m, owl)
    # Every option is checked before the calibration pass, whether the method uses it or not.
    pt.check_sparsegpt_options(block_size, damping, n_m if method == "sparsegpt" else None)
    pt.check_owl_options(owl_threshold, owl_lam, prefix="owl_")
    for value, name in ((sequential, "sequential"), (progress, "progress")):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    layers = _compile_regex(layers, "layers")
    if blocks is not None and not isinstance(blocks, str | re.Pattern) and not callable(blocks):
        raise TypeError(
            "blocks must be a regex string, a compiled pattern or a callable path -> key, got "
            f"{blocks!r}"
        )
    if isinstance(blocks, str | re.Pattern):
        blocks = _compile_regex(blocks, "blocks")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {mesh!r}")
    if isinstance(calibration_batches, jax.Array | np.ndarray | dict) or not isinstance(
        calibration_batches, Iterable
    ):
        raise TypeError(
            "calibration_batches must be a sequence or an iterable of batches (e.g. [x] for one "
            f"batch x), got {type(calibration_batches).__name__} (an array would be read row "
            "by row, a dict key by key)"
        )
    batches = list(calibration_batches)
    _check_batches(batches)
    dp = _data_parallel(mesh, batches) if method != "magnitude" else None
    flat_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat_path]
    leaves = [jnp.asarray(x) for _, x in flat_path]
    walk = _analyse(fn, params, batches[0])
    sites = walk.sites
    order = _select(paths, leaves, sites, walk.uses, walk.refused, layers)
    if n_m is not None:
        for s in order:
            site = sites[s]
            d_in = _inputs(leaves[site.leaf].shape, site)
            if d_in % n_m[1]:
                raise ValueError(
                    f"n_m={n_m}: m={n_m[1]} must divide the {d_in} inputs of {paths[site.leaf]!r}"
                )
    groups = _groups(order, sites, paths, blocks)

    source = leaves
    if dp is not None:  # replicated over the mesh once, not once per pass
        source = jax.device_put(leaves, NamedSharding(dp[0], P()))
    sparsities = {s: sparsity for s in order}
    if owl:
        norm_fn = _all_norms(fn, len(leaves), tuple(order), treedef, dp)
        sums = _accumulate(norm_fn, source, batches, dp)
        scores = {}
        for s, (_, sq, _) in zip(order, sums):
            kernel = _as_matrix(leaves[sites[s].leaf], sites[s]).astype(jnp.float32)
            scores[s] = jnp.abs(kernel) * jnp.sqrt(sq)[:, None]
        group_scores = [jnp.concatenate([scores[s].ravel() for s in g]) for g in groups]
        del scores
        owl_s = pt.owl_sparsities(group_scores, sparsity, threshold=owl_threshold, lam=owl_lam)
        del group_scores
        sparsities = {s: float(v) for g, v in zip(groups, owl_s) for s in g}

    dense = source
    current = list(source)
    masks: list[Any] = [jnp.ones((), bool)] * len(leaves)
    sg_kwargs = {"block_size": block_size, "damping": damping}
    bar = _progress_bar(progress, len(order), method)
    try:
        for group in groups:
            stats: dict[int, Any] = {}
            if method != "magnitude":
                stats_fn = _site_stats(
                    fn, len(leaves), tuple(group), method == "sparsegpt", treedef, dp
                )
                sums = _accumulate(stats_fn, current if sequential else dense, batches, dp)
                stats = dict(zip(group, sums))
                del sums  # each layer's statistics are freed as soon as it is pruned
                for s in group:
                    if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(stats[s])):
                        raise ValueError(
                            f"the inputs of layer {paths[sites[s].leaf]!r} contain NaN or inf "
                            "on the calibration batches"
                        )
                _probe_point()
            for s in group:
                site = sites[s]
                new, mask = _prune_layer(
                    method,
                    current[site.leaf],
                    site,
                    stats.pop(s, None),
                    sparsities[s],
                    n_m,
                    sg_kwargs,
                )
                current[site.leaf] = new.astype(leaves[site.leaf].dtype)
                masks[site.leaf] = mask
                del new, mask
                _probe_point()
                if bar is not None:
                    bar.set_postfix_str(paths[site.leaf], refresh=False)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    pruned = {sites[s].leaf for s in order}
    out_leaves, out_masks = [], []
    for i, (_, x) in enumerate(flat_path):
        if i not in pruned:
            out_leaves.append(x)
            out_masks.append(masks[i])
            continue
        new, mask = current[i], masks[i]
        if dp is not None and isinstance(x, jax.Array):  # back where the params were
            new, mask = jax.device_put((new, mask), x.sharding)
        out_leaves.append(new)
        out_masks.append(mask)
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)
    return unflatten(out_leaves), unflatten(out_masks)


__all__ = ["prune_oneshot"]
