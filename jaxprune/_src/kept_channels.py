"""Keep vectors: which features of one axis survive the channel masks.

A keep vector is a frozenset of *atoms* whose product (AND) gives, for every
index of an axis, 1 if the feature is kept and 0 if it is pruned (for 0/1 masks;
in between for soft masks). An atom is either

* ``("m", i, before, after)``: mask ``i`` laid out on an axis of length
  ``before * C * after``, index ``(outer * C + c) * after + inner`` reading
  ``mask[c]`` (a flatten of ``(H, W, C)`` into one axis gives
  ``before = H * W``), or
* ``("or", {vec, ...})``: kept where any of the keep vectors keeps it, for a
  value read by consumers that prune different features.

The empty set keeps everything. AND is set union, so meeting the same mask twice
changes nothing and counts stay linear in each mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

EMPTY: frozenset = frozenset()


class MaskError(ValueError):
    """A mask that cannot be followed through the function."""


def path_name(prefix: str, path) -> str:
    """``args[1]`` + ``('layer', 0)`` -> ``args[1]/layer/0``."""
    parts = [prefix]
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


# ---------------------------------------------------------------------------
# Keep vectors.


def keep_both(a: frozenset | None, b: frozenset | None) -> frozenset:
    """The keep vector of the features that both ``a`` and ``b`` keep (AND).

    A keep vector is a product of atoms, so AND is the union of the atom sets; ``None`` (no
    mask on the axis) keeps everything.
    """
    return (a or EMPTY) | (b or EMPTY)


def keep_any(vecs: Sequence[frozenset | None]) -> frozenset:
    """The keep vector of the features that at least one of ``vecs`` keeps (OR).

    Atoms common to every vector stay factored out; the rest becomes one ``("or", ...)`` atom.
    A vector that keeps everything (empty or ``None``) makes the result keep everything.
    """
    if not vecs or any(not v for v in vecs):
        return EMPTY
    s = frozenset(vecs)
    if len(s) == 1:
        return next(iter(s))
    common = frozenset.intersection(*s)
    rest = frozenset(v - common for v in s)
    if any(not v for v in rest):
        return common
    return common | frozenset([("or", rest)])


def _scale_atom(atom, before: int, after: int):
    if atom[0] == "m":
        return ("m", atom[1], atom[2] * before, atom[3] * after)
    return ("or", frozenset(frozenset(_scale_atom(x, before, after) for x in v) for v in atom[1]))


def _split_atom(atom, dims: Sequence[int]):
    """Places an atom of a merged axis onto one of the ``dims`` it splits into.

    Returns ``(j, atom on dims[j])`` or ``None`` when the mask straddles axes.
    """
    if atom[0] == "m":
        # Flat index = ((outer * C) + c) * a + inner with outer < b and inner < a:
        # the mask lives on dims[j] alone when the dims before j divide b and
        # the dims after j divide a.
        _, i, b, a = atom
        fallback = None
        for j, d in enumerate(dims):
            before, after = math.prod(dims[:j]), math.prod(dims[j + 1 :])
            if b % before == 0 and a % after == 0:
                placed = (j, ("m", i, b // before, a // after))
                if d != 1:
                    return placed
                fallback = fallback or placed
        return fallback
    target = None
    children = []
    for v in atom[1]:
        placed = [_split_atom(x, dims) for x in v]
        if any(p is None for p in placed):
            return None
        js = {p[0] for p in placed}
        if len(js) != 1 or (target is not None and js != {target}):
            return None
        target = next(iter(js))
        children.append(frozenset(p[1] for p in placed))
    return target, ("or", frozenset(children))


def reshape_groups(src: Sequence[int], dst: Sequence[int]):
    """Groups of consecutive axes of ``src`` and ``dst`` with equal products.

    Size-1 axes form their own groups where they can. Returns a list of
    ``(src_axes, dst_axes)`` or ``None`` when the shapes do not line up.
    """
    groups = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            groups.append(([i], []))
            i += 1
            continue
        if j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(src) or j >= len(dst):
            return None
        si, dj = [i], [j]
        ps, pd = src[i], dst[j]
        i += 1
        j += 1
        while ps != pd:
            if ps < pd:
                if i >= len(src):
                    return None
                ps *= src[i]
                si.append(i)
                i += 1
            else:
                if j >= len(dst):
                    return None
                pd *= dst[j]
                dj.append(j)
                j += 1
        groups.append((si, dj))
    return groups


def map_reshape(ann: dict, src: Sequence[int], dst: Sequence[int], what: str) -> dict:
    """Moves the keep vectors of ``ann`` (on ``src``'s axes) onto ``dst``'s axes."""
    if not ann:
        return {}
    groups = reshape_groups(src, dst)
    if groups is None:
        raise MaskError(f"cannot follow a masked axis through {what} {tuple(src)} -> {tuple(dst)}")
    out: dict[int, frozenset] = {}
    for si, dj in groups:
        masked = [a for a in si if a in ann]
        if not masked:
            continue
        if not dj:
            continue
        # Merge the source axes into one flat axis, then split it over dst.
        atoms = []
        for a in masked:
            before = math.prod(src[k] for k in si if k < a)
            after = math.prod(src[k] for k in si if k > a)
            atoms.extend(_scale_atom(x, before, after) for x in ann[a])
        dims = [dst[k] for k in dj]
        for atom in atoms:
            placed = _split_atom(atom, dims)
            if placed is None:
                raise MaskError(
                    f"a masked axis is split across several axes by {what} "
                    f"{tuple(src)} -> {tuple(dst)}"
                )
            k = dj[placed[0]]
            out[k] = out.get(k, EMPTY) | frozenset([placed[1]])
    return out


class Evaluator:
    """Turns keep vectors into jnp counts, memoised."""

    def __init__(self, masks: Sequence[jax.Array]):
        self.masks = masks
        self._counts: dict[tuple[frozenset, int], Any] = {}
        self._vectors: dict[tuple[Any, int], Any] = {}

    def atom_vector(self, atom, n: int):
        key = (atom, n)
        out = self._vectors.get(key)
        if out is None:
            if atom[0] == "m":
                _, i, b, a = atom
                m = self.masks[i]
                out = jnp.tile(jnp.repeat(m, a), b) if (a != 1 or b != 1) else m
            else:
                miss = None
                for v in atom[1]:
                    term = 1.0 - self.vector(v, n)
                    miss = term if miss is None else miss * term
                out = 1.0 - miss
            self._vectors[key] = out
        return out

    def vector(self, vec: frozenset, n: int):
        out = None
        for atom in sorted(vec, key=repr):
            v = self.atom_vector(atom, n)
            out = v if out is None else out * v
        return out

    def count(self, vec: frozenset | None, n: int):
        if not vec:
            return n
        key = (vec, n)
        out = self._counts.get(key)
        if out is None:
            if len(vec) == 1:
                (atom,) = vec
                if atom[0] == "m":
                    out = atom[2] * atom[3] * jnp.sum(self.masks[atom[1]])
            if out is None:
                out = jnp.sum(self.vector(vec, n))
            self._counts[key] = out
        return out
