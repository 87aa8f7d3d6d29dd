r"""One-shot pruning of a whole trained model from calibration batches.

:func:`prune_oneshot` finds the linear layers of any JAX function ``fn(params, batch)`` from
its jaxpr, with no model-specific hooks (Flax linen, Flax NNX through ``nnx.split``/``merge``,
Equinox and plain functions alike):

1. ``jax.make_jaxpr(fn)(params, batch)`` is walked, inlining the sub-jaxprs of ``jit``,
   ``closed_call``, ``remat`` and ``custom_jvp``/``custom_vjp`` calls. A params leaf read
   (possibly through ``convert_element_type`` or a 2-D ``transpose``) by a ``dot_general``
   as one operand, with one contracted axis and no batch axes, is a *linear layer*; the axis
   it contracts is its input axis (axis 0 of a Flax ``(in, out)`` kernel, axis 1 of an
   Equinox ``(out, in)`` weight).
2. A small interpreter evaluates the jaxpr on a calibration batch inside ``jax.jit`` and
   stops at one layer's ``dot_general``, recording its other operand: the layer's inputs,
   flattened to ``(tokens, in)``. Their statistics :math:`\sum x x^\top` (SparseGPT) or
   :math:`\sum x^2` (Wanda, OWL) are accumulated in float32 over all batches.
3. Layers are pruned in the order the function evaluates them, one Hessian in memory at a
   time.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal

from jaxprune._src import masks as masks_lib
from jaxprune._src import posttraining as pt
from jaxprune._src import structured
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
    """One ``dot_general`` that reads a rank-2 params leaf: the leaf and its input axis."""

    leaf: int
    in_axis: int


class _Captured(Exception):  # noqa: N818 (control flow, not an error)
    def __init__(self, x: Array):
        super().__init__("captured")
        self.x = x


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
    """Evaluates a jaxpr, following params leaves to the ``dot_general``s that read them.

    ``targets``: site indices whose inputs are wanted. With ``stop=True`` the walk raises
    :class:`_Captured` with the first target's input matrix; otherwise ``on_input(site, x)``
    is called for every target and the walk runs to the end.
    """

    def __init__(self, targets=(), stop=False, on_input=None):
        self.sites: list[_Site] = []
        self.uses: dict[int, list[str]] = {}
        self.targets = set(targets)
        self.stop = stop
        self.on_input = on_input

    def _use(self, origin: _Origin, what: str) -> None:
        self.uses.setdefault(origin.leaf, []).append(what)

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
                outs = None
                if any(inorig):
                    outorig = self._follow(eqn, name, invals, inorig)
                if outs is None:
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
        site = len(self.sites)
        self.sites.append(_Site(origin.leaf, w_axis if not origin.transposed else 1 - w_axis))
        self._use(origin, "dot_general")
        if site in self.targets:
            x = invals[1 - wi]
            x = jnp.moveaxis(x, x_axis, -1)
            x = x.reshape(-1, x.shape[-1])
            if self.stop:
                raise _Captured(x)
            self.on_input(site, x)


def _walk_fn(fn, n_params: int, walk: _Walk) -> Callable[..., Any]:
    """``(param_leaves, batch) -> outputs`` through the interpreter."""

    def run(param_leaves, treedef, batch):
        params = jax.tree_util.tree_unflatten(treedef, param_leaves)
        closed = jax.make_jaxpr(fn)(params, batch)
        args = [*param_leaves, *jax.tree_util.tree_leaves(batch)]
        origins = [_Origin(i) if i < n_params else None for i in range(len(args))]
        return walk.run(closed.jaxpr, closed.consts, args, origins)[0]

    return run


def _analyse(fn, params, batch) -> tuple[list[_Site], dict[int, list[str]]]:
    flat, treedef = jax.tree_util.tree_flatten(params)
    walk = _Walk()
    run = _walk_fn(fn, len(flat), walk)
    jax.eval_shape(lambda p, b: run(p, treedef, b), flat, batch)
    return walk.sites, walk.uses


def _f32_sums(x: Array, hessian: bool) -> tuple[Array, Array]:
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=0)
    if not hessian:
        return sq, sq
    return jnp.matmul(x.T, x, precision=lax.Precision.HIGHEST), sq


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


def _site_stats(fn, n_params, site, hessian, treedef):
    """A jitted ``(param_leaves, batch) -> (Σ xᵀx or Σ x², Σ x², rows)`` for one site."""
    return _cached(
        fn,
        ("site", n_params, site, hessian, treedef),
        lambda: _build_site_stats(fn, n_params, site, hessian, treedef),
    )


def _build_site_stats(fn, n_params, site, hessian, treedef):

    def stats(param_leaves, batch):
        walk = _Walk(targets=(site,), stop=True)
        try:
            _walk_fn(fn, n_params, walk)(param_leaves, treedef, batch)
        except _Captured as c:
            x = c.x
            xtx, sq = _f32_sums(x, hessian)
            return xtx, sq, jnp.asarray(x.shape[0], jnp.float32)
        raise AssertionError("the layer was not reached")  # pragma: no cover

    return jax.jit(stats)


def _all_norms(fn, n_params, sites, treedef):
    """A jitted ``(param_leaves, batch) -> [Σ x² per site]`` in one pass (for OWL)."""
    return _cached(
        fn,
        ("norms", n_params, sites, treedef),
        lambda: _build_all_norms(fn, n_params, sites, treedef),
    )


def _build_all_norms(fn, n_params, sites, treedef):

    def norms(param_leaves, batch):
        out: dict[int, Array] = {}
        walk = _Walk(
            targets=sites, on_input=lambda s, x: out.__setitem__(s, _f32_sums(x, False)[0])
        )
        _walk_fn(fn, n_params, walk)(param_leaves, treedef, batch)
        return [out[s] for s in sites]

    return jax.jit(norms)


def _check_batches(batches: list[Any]) -> None:
    if not batches:
        raise ValueError("calibration_batches is empty; pass at least one batch")
    for b, batch in enumerate(batches):
        for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
            if is_float_array(leaf) and not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(
                    f"calibration_batches[{b}] has NaN or inf in {path_str(path) or 'the batch'}"
                )


def _select(paths, leaves, sites, uses, layers) -> list[int]:
    """Indices of the site of every selected layer, in evaluation order; refuses bad leaves."""
    by_leaf: dict[int, list[int]] = {}
    for s, site in enumerate(sites):
        by_leaf.setdefault(site.leaf, []).append(s)
    looped = {
        i
        for i, u in uses.items()
        if any("loop" in w for w in u) and is_float_array(leaves[i]) and np.ndim(leaves[i]) == 2
    }
    candidates = sorted(set(by_leaf) | looped)
    if layers is not None:
        rx = layers
        chosen = [i for i in candidates if rx.search(paths[i])]
        if not chosen:
            raise ValueError(
                f"layers={rx.pattern!r} matches no linear layer; the leaves read by a "
                f"dot_general are {[paths[i] for i in candidates]}"
            )
    else:
        chosen = candidates
        if not chosen:
            raise ValueError("fn has no linear layer (no dot_general reads a 2-D params leaf)")
    for i in chosen:
        if not is_float_array(leaves[i]):
            raise TypeError(f"linear layer {paths[i]!r} is not a float array")
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
    return sorted(by_leaf[i][0] for i in chosen)


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


def _prune_layer(method, w, in_axis, stats, sparsity, n_m, sparsegpt_kwargs):
    """Prunes one leaf; ``stats = (Σ xᵀx or None, Σ x², rows)``."""
    kernel = w if in_axis == 0 else w.T
    if method == "magnitude":
        if n_m is None:
            mask = masks_lib.magnitude_mask(kernel, sparsity)
        else:
            mask = structured.nm_mask(kernel, n_m[0], n_m[1], axis=0)
        new = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
    elif method == "wanda":
        mask = pt.wanda_mask(kernel, jnp.sqrt(stats[1]), None if n_m else sparsity, n_m=n_m)
        new = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
    else:
        hessian = (2.0 / stats[2]) * stats[0]
        new, mask = pt.sparsegpt_prune(
            kernel, hessian, None if n_m else sparsity, n_m=n_m, **sparsegpt_kwargs
        )
    if in_axis == 1:
        new, mask = new.T, mask.T
    return new, mask


def prune_oneshot(
    fn: Callable[[Params, Any], Any],
    params: Params,
    calibration_batches: Iterable[Any],
    *,
    method: str = "magnitude",
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    layers: str | re.Pattern | None = None,
    sequential: bool = True,
    owl: bool = False,
    owl_threshold: float = 5.0,
    owl_lam: float = 0.08,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[Params, Masks]:
    r"""Prunes every linear layer of a trained model in one shot, from calibration batches.

    The linear layers are found in the jaxpr of ``fn(params, batch)`` (a params leaf read by
    one ``dot_general``; see the module notes), then pruned one by one in the order ``fn``
    evaluates them:

    * ``"magnitude"``: :func:`jaxprune.magnitude_mask` per layer (calibration data is only
      used to find the layers), or :func:`jaxprune.nm_mask` along the input axis for ``n_m``.
    * ``"wanda"``: :func:`wanda_mask` with the layer's input norms
      :math:`\|X_i\|_2 = \sqrt{\sum_t x_{ti}^2}` over all calibration tokens.
    * ``"sparsegpt"``: :func:`sparsegpt_prune` with :math:`H = \tfrac{2}{N}\sum_t x_t
      x_t^\top`; kept weights are updated.

    With ``sequential=True`` (the reference codes' protocol) each layer is calibrated on the
    inputs it receives from the already-pruned earlier layers; with ``False``, on those of the
    dense model. With ``owl=True`` the per-layer sparsities are :func:`owl_sparsities` of the
    layers' Wanda scores on the dense model (each selected leaf is one layer, weighted by its
    size, so the total sparsity of the selected layers is ``sparsity``).

    Weights keep their layout: a ``(out, in)`` weight (Equinox, or a transposed read) is pruned
    along its input axis 1. Statistics are accumulated in float32; only one layer's statistics
    are held at a time. Each layer compiles one truncated forward pass; the compiled passes are
    kept (a small bounded cache), so calling again with the same ``fn`` (another method or
    sparsity) does not compile them again.

    Args:
      fn: any JAX function ``fn(params, batch)``, e.g. ``model.apply`` for linen.
      params: the trained parameters (a pytree).
      calibration_batches: an iterable of batches (read several times: it is made a list).
      method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
      sparsity: fraction pruned per layer, in ``[0, 1)``; default 0.5 unless ``n_m`` is given.
      n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs per output unit.
      layers: a regex searched in the ``/``-joined leaf paths (``params/Dense_0/kernel``) that
        selects which linear layers are pruned; default all.
      sequential: calibrate each layer on the outputs of the pruned earlier layers.
      owl: per-layer sparsities by outlier ratio (OWL); not with ``n_m``.
      owl_threshold: OWL's outlier threshold ``M`` (relative to the mean score).
      owl_lam: OWL's half-width ``λ`` of the sparsity range.
      block_size: SparseGPT's block size.
      damping: SparseGPT's relative damping.

    Returns:
      ``(pruned_params, masks)``: params with pruned entries exactly 0 (and, for SparseGPT,
      updated kept weights), and masks shaped like params: bool arrays for the pruned leaves,
      scalar ``True`` elsewhere.

    Raises:
      ValueError: for an unknown method, a sparsity outside ``[0, 1)``, both ``sparsity`` and
        ``n_m``, an invalid ``n_m`` (or ``m`` not dividing a layer's inputs), ``owl`` with
        ``n_m``, no calibration batch, NaN or inf in the calibration data or in a layer's
        inputs, a ``layers`` rule matching no linear layer, or a selected leaf that is read by
        more than one operation (tied weights) or inside a scan/while/cond.
      TypeError: for ``layers`` that is not a regex, or a non-bool ``sequential``/``owl``.

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
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {sequential!r}")
    if layers is not None:
        if isinstance(layers, str):
            try:
                layers = re.compile(layers)
            except re.error as e:
                raise ValueError(f"layers is not a valid regular expression: {e}") from e
        elif not isinstance(layers, re.Pattern):
            raise TypeError(f"layers must be a regex string or compiled pattern, got {layers!r}")
    batches = list(calibration_batches)
    _check_batches(batches)
    flat_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat_path]
    leaves = [jnp.asarray(x) for _, x in flat_path]
    sites, uses = _analyse(fn, params, batches[0])
    order = _select(paths, leaves, sites, uses, layers)
    if n_m is not None:
        for s in order:
            site = sites[s]
            d_in = leaves[site.leaf].shape[site.in_axis]
            if d_in % n_m[1]:
                raise ValueError(
                    f"n_m={n_m}: m={n_m[1]} must divide the {d_in} inputs of {paths[site.leaf]!r}"
                )

    sparsities = {s: sparsity for s in order}
    if owl:
        norm_fn = _all_norms(fn, len(leaves), tuple(order), treedef)
        sums = None
        for batch in batches:
            out = norm_fn(leaves, batch)
            sums = out if sums is None else [a + b for a, b in zip(sums, out)]
        scores = []
        for s, sq in zip(order, sums):
            site = sites[s]
            w = leaves[site.leaf]
            kernel = (w if site.in_axis == 0 else w.T).astype(jnp.float32)
            scores.append(jnp.abs(kernel) * jnp.sqrt(sq)[:, None])
        owl_s = pt.owl_sparsities(scores, sparsity, threshold=owl_threshold, lam=owl_lam)
        del scores
        sparsities = {s: float(v) for s, v in zip(order, owl_s)}

    dense = list(leaves)
    current = list(leaves)
    masks: list[Any] = [jnp.ones((), bool)] * len(leaves)
    sg_kwargs = {"block_size": block_size, "damping": damping}
    for s in order:
        site = sites[s]
        stats = None
        if method != "magnitude":
            stats_fn = _site_stats(fn, len(leaves), s, method == "sparsegpt", treedef)
            source = current if sequential else dense
            for batch in batches:
                out = stats_fn(source, batch)
                stats = out if stats is None else tuple(a + b for a, b in zip(stats, out))
            if not all(bool(jnp.all(jnp.isfinite(a))) for a in stats):
                raise ValueError(
                    f"the inputs of layer {paths[site.leaf]!r} contain NaN or inf on the "
                    "calibration batches"
                )
        new, mask = _prune_layer(
            method, current[site.leaf], site.in_axis, stats, sparsities[s], n_m, sg_kwargs
        )
        current[site.leaf] = new.astype(leaves[site.leaf].dtype)
        masks[site.leaf] = mask
        del stats
    pruned = {sites[s].leaf for s in order}
    out_leaves = [current[i] if i in pruned else x for i, (_, x) in enumerate(flat_path)]
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)
    return unflatten(out_leaves), unflatten(masks)


__all__ = ["prune_oneshot"]
