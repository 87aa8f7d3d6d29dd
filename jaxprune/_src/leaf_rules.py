"""Which leaves of a params tree are pruned.

By default a leaf is pruned when it is a floating-point array of rank >= 2 that is not named
``bias``: kernels of dense and convolution layers, and embedding tables. Biases, normalisation
scales, scalars and integer leaves are left alone. A rule given by the user replaces the
default:

* a regex (``str`` or compiled pattern), searched (``re.search``, unanchored) in the leaf's
  path joined with ``/``, e.g. ``params/Dense_0/kernel``;
* a predicate ``rule(path, leaf) -> bool``.

A rule that selects no leaf, or that selects a non-float leaf, is an error: both are almost
always a typo in the rule. Scalars and empty leaves that a rule matches are skipped (there is
nothing to prune in them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax

from jaxprune._src.base import LeafRule, is_float_array, path_str


def compile_rule(rule: LeafRule | None, name: str) -> Any:
    """Validates a leaf rule at construction time; returns a compiled regex or the predicate."""
    if rule is None or callable(rule) and not isinstance(rule, (str, re.Pattern)):
        return rule
    if isinstance(rule, re.Pattern):
        return rule
    if isinstance(rule, str):
        try:
            return re.compile(rule)
        except re.error as e:
            raise ValueError(f"{name} is not a valid regular expression: {rule!r} ({e})") from e
    raise TypeError(
        f"{name} must be a regex string, a compiled pattern or a predicate (path, leaf) -> bool, "
        f"got {rule!r}"
    )


def _matches(rule: Any, path: str, leaf: Any) -> bool:
    if isinstance(rule, re.Pattern):
        return rule.search(path) is not None
    return bool(rule(path, leaf))


def default_prunable(leaf: Any, path: str = "") -> bool:
    """Float arrays of rank >= 2 with at least one entry, unless the leaf is named ``bias``.

    The name check leaves out biases stored with singleton axes, such as Equinox's
    ``(out, 1, 1)`` convolution bias, while a ``(64, 1)`` kernel of a one-unit head is pruned.
    """
    shape = getattr(leaf, "shape", None)
    if shape is None or not is_float_array(leaf) or len(shape) < 2 or leaf.size == 0:
        return False
    return path.rsplit("/", 1)[-1] != "bias"


def default_rule(path: str, leaf: Any) -> bool:
    """The default leaf rule, as a predicate ``(path, leaf) -> bool`` to build on.

    True for floating-point arrays of rank >= 2 with at least one entry, unless the leaf is
    named ``bias`` (the last part of its ``/``-joined path): dense and convolution kernels and
    embedding tables are pruned; biases (also linen attention biases, which are rank 2, and
    Equinox's ``(out, 1, 1)`` convolution biases), normalisation parameters, scalars and
    integer leaves are not. Extend it rather than rewrite it, e.g.
    ``prune=lambda p, x: jaxprune.default_rule(p, x) and "head" not in p`` (or, simpler,
    ``exclude="head"``).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> jp.default_rule("Dense_0/kernel", jnp.ones((4, 4)))
      True
      >>> jp.default_rule("Attention_0/bias", jnp.ones((4, 4)))
      False
      >>> jp.default_rule("LayerNorm_0/scale", jnp.ones(4))
      False
    """
    return default_prunable(leaf, path)


def flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
    """Paths, leaves and treedef of a params tree."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [path_str(p) for p, _ in flat], [leaf for _, leaf in flat], treedef


def select(
    paths: list[str],
    leaves: list[Any],
    rule: Any,
    name: str = "prune",
    *,
    exclude: Any = None,
) -> list[bool]:
    """For each leaf, whether it is pruned under ``rule`` (``None``: the default).

    ``exclude`` (a compiled rule from :func:`compile_rule`, or ``None``) removes the leaves it
    matches from the selection; an ``exclude`` that matches no selected leaf is an error (a
    typo, almost always), and so is one that removes every selected leaf.
    """
    chosen = _select(paths, leaves, rule, name)
    if exclude is None:
        return chosen
    dropped = [on and _matches(exclude, p, x) for p, x, on in zip(paths, leaves, chosen)]
    if not any(dropped):
        picked = [p for p, on in zip(paths, chosen) if on]
        raise ValueError(
            f"exclude={describe(exclude)} matches no pruned leaf; pruned leaves are {picked}"
        )
    out = [on and not d for on, d in zip(chosen, dropped)]
    if not any(out):
        raise ValueError(f"exclude={describe(exclude)} removes every pruned leaf")
    return out


def _select(paths: list[str], leaves: list[Any], rule: Any, name: str) -> list[bool]:
    if rule is None:
        return [default_prunable(leaf, path) for path, leaf in zip(paths, leaves)]
    chosen = []
    any_match = False
    for path, leaf in zip(paths, leaves):
        if not _matches(rule, path, leaf):
            chosen.append(False)
            continue
        any_match = True
        if not is_float_array(leaf):
            raise TypeError(
                f"{name} selects {path!r}, which is not a floating-point array "
                f"(dtype {getattr(leaf, 'dtype', type(leaf).__name__)}); only float leaves can "
                "be pruned"
            )
        chosen.append(leaf.ndim > 0 and leaf.size > 0)
    if not any_match:
        raise ValueError(f"{name}={describe(rule)} matches no leaf; leaf paths are {paths}")
    return chosen


def describe(rule: Any) -> str:
    """A rule as the user wrote it: a regex's pattern (see :func:`shown`), else its repr."""
    return repr(shown(rule)) if isinstance(rule, re.Pattern) else repr(rule)


# Exact-path keys are held as regexes marked with this comment group (matching ignores it), so
# that messages can show the path itself and leave a regex the user wrote as written.
_EXACT = "(?#exact path)"


def exact_path_pattern(path: str) -> str:
    """A regex that matches the leaf path ``path`` exactly (messages show it as ``path``)."""
    return _EXACT + "^" + re.escape(path) + "$"


def shown(rx: re.Pattern) -> str:
    """``rx``'s pattern, or the path of an :func:`exact_path_pattern`."""
    if rx.pattern.startswith(_EXACT + "^") and rx.pattern.endswith("$"):
        return re.sub(r"\\(.)", r"\1", rx.pattern[len(_EXACT) + 1 : -1], flags=re.S)
    return rx.pattern


def compile_map(mapping: Mapping[str, Any] | None, name: str) -> list[tuple[re.Pattern, Any]]:
    """Validates a ``{regex: value}`` map; returns ``[(compiled regex, value)]``."""
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a mapping from regex to value, got {mapping!r}")
    out = []
    for pattern, value in mapping.items():
        if not isinstance(pattern, (str, re.Pattern)):
            raise TypeError(f"{name} keys must be regex strings, got {pattern!r}")
        out.append((compile_rule(pattern, f"{name} key {pattern!r}"), value))
    return out


def lookup(
    entries: list[tuple[re.Pattern, Any]], paths: list[str], chosen: list[bool], name: str
) -> list[Any]:
    """Per leaf, the value of the one map entry whose regex it matches (``None`` if none).

    Only pruned leaves are looked up. Two entries matching one leaf, or an entry matching no
    pruned leaf, raise ``ValueError``.
    """
    values: list[Any] = [None] * len(paths)
    used = [False] * len(entries)
    for i, (path, on) in enumerate(zip(paths, chosen)):
        if not on:
            continue
        hits = [j for j, (rx, _) in enumerate(entries) if rx.search(path)]
        if len(hits) > 1:
            keys = [shown(entries[j][0]) for j in hits]
            raise ValueError(f"multiple matches in {name} for leaf {path!r}: {keys}")
        if hits:
            used[hits[0]] = True
            values[i] = entries[hits[0]][1]
    for (rx, _), was_used in zip(entries, used):
        if not was_used:
            pruned = [p for p, on in zip(paths, chosen) if on]
            raise ValueError(
                f"{name} entry {shown(rx)!r} matches no pruned leaf; pruned leaves are {pruned}"
            )
    return values
