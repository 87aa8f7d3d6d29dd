r"""The legacy TensorFlow pruning hyperparameters: ``PruningConfig`` and its string form.

TensorFlow's ``tf.contrib.model_pruning`` and lingvo's ``model_pruning`` read their settings from
a ``tf.HParams`` object, usually parsed from a command-line string::

    --pruning_hparams=name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,
      target_sparsity=0.9,sparsity_function_begin_step=10000,sparsity_function_end_step=100000

:class:`PruningConfig` has every field of that hyperparameter table, with the same defaults, and
:meth:`PruningConfig.parse` reads the same string; :func:`jaxprune.tf.pruning_from_config` turns a
config into an optax transformation with the legacy behaviour.

The string format is ``tf.HParams.parse``'s: ``name=value`` pairs separated by commas, lists in
brackets, their entries separated by commas or spaces::

    weight_sparsity_map=[conv1:0.8,dense.*kernel:0.9],block_dims_map=[dense1:4x4,dense2:1x16]

so a regex in a map can contain neither ``:`` (the entry is split on it, as TensorFlow does) nor
``,``, ``]`` or whitespace (they end the entry or the list).

Part of the TensorFlow-compatibility wing (:mod:`jaxprune.tf`): nothing outside the wing imports
this module.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["PruningConfig", "PruningConfigWarning"]

THRESHOLDS = ("histogram", "topk")
POOLINGS = ("AVG", "MAX")
_INT32_MAX = 2**31 - 1
# Characters that end a list entry or the list itself in the hparams string.
_UNWRITABLE = re.compile(r"[\s,\]:]")
_KEY = re.compile(r"[A-Za-z_][\w.]*\Z")
_INT = re.compile(r"[+-]?\d+\Z")

WeightSparsityMap = tuple[tuple[str, float], ...]
BlockDimsMap = tuple[tuple[str, tuple[int, int]], ...]


# The values each int field allows, for the message of an out-of-range value.
_INT_RANGES = {
    "begin_pruning_step": f"[0, {_INT32_MAX}]",
    "end_pruning_step": f"-1 or [1, {_INT32_MAX}]",
    "pruning_frequency": f"[1, {_INT32_MAX}]",
    "nbins": f"[1, {_INT32_MAX}]",
    "block_height": f"-1 or [1, {_INT32_MAX}]",
    "block_width": f"-1 or [1, {_INT32_MAX}]",
    "sparsity_function_begin_step": f"[0, {_INT32_MAX - 1}]",
    "sparsity_function_end_step": f"[1, {_INT32_MAX}]",
}


def _check_int(value: Any, name: str, allowed: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    # TensorFlow casts the global step to int32, and so does jaxprune's update count: a larger
    # step could never be reached, and JAX would only fail on it at the first update.
    if abs(value) > _INT32_MAX:
        allowed = allowed or _INT_RANGES.get(name, f"[-{_INT32_MAX}, {_INT32_MAX}]")
        raise ValueError(f"{name} must fit in an int32: it must be in {allowed}, got {value}")
    return value


def _check_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float, got {value!r}")
    return float(value)


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in range [0,1), got {value!r}")


def _check_regex(pattern: Any, name: str) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"{name} keys must be regex strings, got {pattern!r}")
    if not pattern:
        raise ValueError(f"{name} has an empty regex")
    if _UNWRITABLE.search(pattern):
        raise ValueError(
            f"{name} regex {pattern!r} cannot be written in the hparams string: it must not "
            "contain ':', ',', ']' or whitespace (use '|' for alternatives, '.' for any char)"
        )
    try:
        re.compile(pattern)
    # Deep nesting and huge repeat counts fail with RecursionError and OverflowError, not re.error.
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(
            f"{name} regex {pattern!r} is not a valid regular expression: {e}"
        ) from None
    return pattern


def _split_entry(entry: str, name: str, what: str) -> tuple[str, str]:
    parts = entry.split(":")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ValueError(f"malformed {name} entry {entry!r}: expected '<regex>:<{what}>'")
    return parts[0].strip(), parts[1].strip()


def _map_items(value: Any, name: str) -> list[tuple[Any, Any]]:
    """The ``(key, value)`` items of a map given as a mapping, pairs or TF ``"k:v"`` strings."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a mapping {{regex: value}}, or a list of 'regex:value' strings or "
            f"(regex, value) pairs, got {value!r}"
        )
    items = []
    for entry in value:
        if isinstance(entry, str):
            if entry.strip():  # TensorFlow's default is [""]; empty entries are ignored.
                items.append(_split_entry(entry.strip(), name, "value"))
        elif isinstance(entry, tuple) and len(entry) == 2:
            items.append(entry)
        else:
            raise ValueError(f"malformed {name} entry {entry!r}: expected 'regex:value'")
    return items


def _unique(items: list[tuple[str, Any]], name: str) -> None:
    seen = set()
    for key, _ in items:
        if key in seen:
            raise ValueError(f"{name} has the regex {key!r} twice")
        seen.add(key)


def _parse_float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"could not parse {name}: expected a float, got {text!r}") from None


def _parse_int(text: str, name: str) -> int:
    text = text.strip()
    if not _INT.match(text):
        raise ValueError(f"could not parse {name}: expected an int, got {text!r}")
    # More than 10 significant digits cannot be an int32 (and Python refuses to convert very
    # long digit strings): report the range without converting.
    if len(text.lstrip("+-").lstrip("0")) > 10:
        shown = text if len(text) <= 40 else text[:37] + "..."
        allowed = _INT_RANGES.get(name, f"[-{_INT32_MAX}, {_INT32_MAX}]")
        raise ValueError(f"{name} must fit in an int32: it must be in {allowed}, got {shown}")
    return int(text)


def _block_dim(value: Any, name: str) -> int:
    value = _check_int(value, name, f"-1 or [1, {_INT32_MAX}]")
    if value < 1 and value != -1:
        raise ValueError(f"{name} must be >= 1, or -1 for the whole axis, got {value}")
    return value


def _weight_sparsity_map(value: Any) -> WeightSparsityMap:
    name = "weight_sparsity_map"
    out = []
    for pattern, sparsity in _map_items(value, name):
        pattern = _check_regex(pattern, name)
        if isinstance(sparsity, str):
            sparsity = _parse_float(sparsity, f"{name} entry {pattern!r}")
        sparsity = _check_float(sparsity, f"{name}[{pattern!r}]")
        if sparsity >= 1.0:
            raise ValueError(
                f"Weight sparsity can not exceed 1.0: {name}[{pattern!r}] = {sparsity!r} "
                "(must be in range [0,1))"
            )
        _check_fraction(sparsity, f"{name}[{pattern!r}]")
        out.append((pattern, sparsity))
    _unique(out, name)
    return tuple(out)


def _block_dims_map(value: Any) -> BlockDimsMap:
    name = "block_dims_map"
    out = []
    for pattern, dims in _map_items(value, name):
        pattern = _check_regex(pattern, name)
        if isinstance(dims, str):
            parts = dims.split("x")
            if len(parts) != 2:
                raise ValueError(
                    f"{name}: Expected 2 values for block dim for {pattern}, got {dims!r} "
                    "(write it as HxW, e.g. 4x4 or -1x1)"
                )
            dims = tuple(_parse_int(p, f"{name} entry {pattern!r}") for p in parts)
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
            raise TypeError(f"{name}[{pattern!r}] must be 'HxW' or a pair of ints, got {dims!r}")
        dims = tuple(dims)
        if len(dims) != 2:
            raise ValueError(f"{name}: Expected 2 values for block dim for {pattern}, got {dims!r}")
        out.append((pattern, tuple(_block_dim(d, f"{name}[{pattern!r}]") for d in dims)))
    _unique(out, name)
    return tuple(out)  # type: ignore[return-value]


class _class_or_instance_method(classmethod):
    """A classmethod that, called on an instance, is bound to the instance instead."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return super().__get__(instance, owner)
        return types.MethodType(self.__func__, instance)


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """The hyperparameters of TensorFlow's ``model_pruning`` (contrib and lingvo), validated.

    Every field of ``get_pruning_hparams()``, with TensorFlow's defaults, plus ``threshold``
    (jaxprune's): how each mask update finds its threshold.

    * ``"histogram"`` (default): the histogram of ``|w|`` in ``nbins`` bins, cut where its
      cumulative distribution reaches the sparsity, smoothed by ``threshold_decay``; entries
      strictly above the threshold are kept. This is the algorithm the defaults of the
      hyperparameter table belong to (``nbins=256``, ``threshold_decay=0.9``).
    * ``"topk"``: the exact k-th largest ``|w|`` with the same smoothing, entries ``>=`` it kept
      (TensorFlow 1.13–1.15, whose default ``threshold_decay`` was 0.0: set it explicitly).

    The config is immutable and hashable; change a field with ``dataclasses.replace``. Maps may
    be given as a mapping ``{regex: value}``, as a list of ``(regex, value)`` pairs, or as
    TensorFlow's list of ``"regex:value"`` strings (``"HxW"`` values for block dims); they are
    stored as tuples of pairs, in order.

    Attributes:
      name: the name of the specification (TensorFlow's summary scope); kept for logs.
      begin_pruning_step: first step at which masks may be updated, ``>= 0``.
      end_pruning_step: last such step, ``> begin_pruning_step``, or ``-1`` for no end.
      weight_sparsity_map: per-weight targets ``(regex, sparsity)``; a weight whose path the
        regex matches (``re.search``) follows the global curve rescaled by
        ``sparsity / target_sparsity``.
      block_dims_map: per-weight block shapes ``(regex, (height, width))``; ``-1`` is the whole
        axis.
      threshold_decay: smoothing of the threshold, ``thr = cur·(1 − d) + thr_prev·d``, in
        ``[0, 1)``.
      pruning_frequency: a mask update needs ``last_update + pruning_frequency <= step``,
        ``>= 1``.
      nbins: histogram bins (``threshold="histogram"``), ``>= 1``.
      block_height: default block height for rank-2 weights, ``>= 1`` or ``-1``.
      block_width: default block width for rank-2 weights, ``>= 1`` or ``-1``.
      block_pooling_function: ``"AVG"`` or ``"MAX"``, how a block is scored.
      initial_sparsity: sparsity at ``sparsity_function_begin_step``, in ``[0, 1)``.
      target_sparsity: sparsity at ``sparsity_function_end_step``, in ``[0, 1)``.
      sparsity_function_begin_step: start of the sparsity curve, ``>= 0``.
      sparsity_function_end_step: end of the curve, ``> sparsity_function_begin_step``.
      sparsity_function_exponent: exponent of the polynomial curve, ``> 0``.
      use_tpu: accepted for compatibility and ignored (TensorFlow's TPU path computes the same
        threshold).
      threshold: ``"histogram"`` or ``"topk"``.

    Raises:
      ValueError: for a value outside its range, with TensorFlow's wording where it has one
        (e.g. ``"Pruning must begin before it can end"``,
        ``"Weight sparsity can not exceed 1.0"``).
      TypeError: for a value of the wrong type.

    Examples:
      >>> from jaxprune._src.config import PruningConfig
      >>> config = PruningConfig.parse(
      ...     "name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,"
      ...     "weight_sparsity_map=[conv1:0.8,dense.*kernel:0.9],block_dims_map=[dense1:4x4]")
      >>> config.end_pruning_step, config.target_sparsity, config.weight_sparsity_map
      (100000, 0.5, (('conv1', 0.8), ('dense.*kernel', 0.9)))
      >>> config.block_dims_map
      (('dense1', (4, 4)),)
      >>> PruningConfig.parse(str(config)) == config
      True
    """

    name: str = "model_pruning"
    begin_pruning_step: int = 0
    end_pruning_step: int = -1
    weight_sparsity_map: WeightSparsityMap = ()
    block_dims_map: BlockDimsMap = ()
    threshold_decay: float = 0.9
    pruning_frequency: int = 10
    nbins: int = 256
    block_height: int = 1
    block_width: int = 1
    block_pooling_function: str = "AVG"
    initial_sparsity: float = 0.0
    target_sparsity: float = 0.5
    sparsity_function_begin_step: int = 0
    sparsity_function_end_step: int = 100
    sparsity_function_exponent: float = 3.0
    use_tpu: bool = False
    threshold: str = "histogram"

    def __post_init__(self) -> None:
        def put(field: str, value: Any) -> None:
            object.__setattr__(self, field, value)

        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {self.name!r}")
        if re.search(r"[,\[\]]", self.name) or self.name != self.name.strip():
            raise ValueError(
                f"name {self.name!r} cannot be written in the hparams string: it must not "
                "contain ',', '[' or ']', nor start or end with whitespace"
            )
        for field in _INT_FIELDS:
            put(field, _check_int(getattr(self, field), field))
        for field in _FLOAT_FIELDS:
            put(field, _check_float(getattr(self, field), field))
        if not isinstance(self.use_tpu, (bool, np.bool_)):
            raise TypeError(f"use_tpu must be a bool, got {self.use_tpu!r}")
        put("use_tpu", bool(self.use_tpu))

        # The legacy checks (_validate_spec), in TensorFlow's order.
        begin, end = self.begin_pruning_step, self.end_pruning_step
        if begin < 0:
            raise ValueError(f"Illegal value for begin_pruning_step: must be >= 0, got {begin}")
        if begin >= end and end != -1:
            raise ValueError(
                f"Pruning must begin before it can end: begin_pruning_step={begin} must be < "
                f"end_pruning_step={end}; set end_pruning_step to -1 to prune until training "
                "stops"
            )
        sf_begin, sf_end = self.sparsity_function_begin_step, self.sparsity_function_end_step
        if sf_begin < 0:
            raise ValueError(
                f"Illegal value for sparsity_function_begin_step: must be >= 0, got {sf_begin}"
            )
        if sf_begin >= sf_end:
            raise ValueError(
                "Sparsity function requires begin_step < end_step: got "
                f"sparsity_function_begin_step={sf_begin}, sparsity_function_end_step={sf_end}"
            )
        _check_fraction(self.threshold_decay, "threshold_decay")
        _check_fraction(self.initial_sparsity, "initial_sparsity")
        _check_fraction(self.target_sparsity, "target_sparsity")

        # jaxprune's checks of what TensorFlow leaves unchecked.
        if self.pruning_frequency < 1:
            raise ValueError(f"pruning_frequency must be >= 1, got {self.pruning_frequency}")
        if self.nbins < 1:
            raise ValueError(f"nbins must be >= 1, got {self.nbins}")
        _block_dim(self.block_height, "block_height")
        _block_dim(self.block_width, "block_width")
        if self.block_pooling_function not in POOLINGS:
            raise ValueError(
                "Unknown pooling function for block sparsity: block_pooling_function must be "
                f"'AVG' or 'MAX', got {self.block_pooling_function!r}"
            )
        exponent = self.sparsity_function_exponent
        if not (math.isfinite(exponent) and exponent > 0):
            raise ValueError(
                f"sparsity_function_exponent must be a finite float > 0, got {exponent!r}"
            )
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")

        put("weight_sparsity_map", _weight_sparsity_map(self.weight_sparsity_map))
        put("block_dims_map", _block_dims_map(self.block_dims_map))
        if self.weight_sparsity_map and self.target_sparsity == 0.0:
            raise ValueError(
                "weight_sparsity_map needs target_sparsity > 0: a weight's sparsity is the "
                "global one rescaled by value / target_sparsity"
            )

    # ----- the hparams string -----

    @_class_or_instance_method
    def parse(cls_or_self: type[PruningConfig] | PruningConfig, hparams: str) -> PruningConfig:
        """Reads a ``tf.HParams`` string such as ``--pruning_hparams`` takes.

        ``PruningConfig.parse(s)`` starts from the defaults, as
        ``get_pruning_hparams().parse(s)`` does; ``config.parse(s)`` starts from ``config``'s
        values (as ``hparams.parse(s)`` on a changed ``tf.HParams``) and returns a new config.
        An empty string changes nothing.

        Args:
          hparams: ``"name=value,name=value,..."``; lists as ``name=[a,b,...]``, with
            ``regex:sparsity`` entries for ``weight_sparsity_map`` and ``regex:HxW`` entries
            for ``block_dims_map``; booleans as ``true``/``false``.

        Returns:
          The validated :class:`PruningConfig`.

        Raises:
          ValueError: for an unknown name, a name given twice, a value that does not parse as
            its field's type, a malformed list entry, or a value outside its range. The message
            names the hyperparameter.

        Examples:
          >>> from jaxprune._src.config import PruningConfig
          >>> PruningConfig.parse("target_sparsity=0.9").target_sparsity
          0.9
          >>> config = PruningConfig(nbins=64).parse("target_sparsity=0.9")
          >>> config.nbins, config.target_sparsity
          (64, 0.9)
        """
        values = _parse_values(hparams)
        if isinstance(cls_or_self, type):
            return cls_or_self(**values)
        return dataclasses.replace(cls_or_self, **values)

    def format(self, *, only_changed: bool = False) -> str:
        """The hparams string of this config; ``PruningConfig.parse`` reads it back exactly.

        Args:
          only_changed: give only the fields that differ from the defaults (the form of a
            command line).

        Examples:
          >>> from jaxprune._src.config import PruningConfig
          >>> PruningConfig(target_sparsity=0.9, weight_sparsity_map={"conv1": 0.8}).format(
          ...     only_changed=True)
          'weight_sparsity_map=[conv1:0.8],target_sparsity=0.9'
        """
        default = _DEFAULT if only_changed else None
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if default is not None and value == getattr(default, field.name):
                continue
            parts.append(f"{field.name}={_format_value(field.name, value)}")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.format()


class PruningConfigWarning(UserWarning):
    """A :class:`PruningConfig` whose windows do not fit together (it runs, as TensorFlow's).

    Emitted by :func:`jaxprune.tf.pruning_from_config` when no mask update can happen, when the
    sparsity curve is over before the first mask update (the whole target is then applied at
    once), or when it begins after the last one (only ``initial_sparsity`` is ever applied).
    Silence it with ``warnings.filterwarnings("ignore", category=PruningConfigWarning)`` when
    that is what you mean.
    """


def first_update_step(config: PruningConfig) -> int | None:
    """The step of the first mask update under the legacy rule, or ``None`` if there is none.

    The rule ``last_update + pruning_frequency <= step`` with ``last_update = 0`` first holds at
    ``pruning_frequency``, so the first update is at ``max(begin_pruning_step,
    pruning_frequency)``, if that is not after ``end_pruning_step``.

    Examples:
      >>> first_update_step(PruningConfig(begin_pruning_step=0, pruning_frequency=10))
      10
      >>> print(first_update_step(PruningConfig(end_pruning_step=5, pruning_frequency=10)))
      None
    """
    first = max(config.begin_pruning_step, config.pruning_frequency)
    if config.end_pruning_step != -1 and first > config.end_pruning_step:
        return None
    return first


def timeline_problems(config: PruningConfig) -> list[str]:
    """What is wrong with how ``config``'s pruning and sparsity windows fit together.

    Three cases, each allowed by TensorFlow and almost always a mistake:

    * no step satisfies the update rule inside ``[begin_pruning_step, end_pruning_step]``: the
      masks are never updated;
    * ``sparsity_function_end_step`` is before the first mask update: that update applies
      ``target_sparsity`` at once, with no gradual ramp;
    * ``sparsity_function_begin_step`` is at or after the last mask update (the first one
      plus a multiple of ``pruning_frequency``, at most ``end_pruning_step``): every update
      applies ``initial_sparsity``, never ``target_sparsity``.

    Returns:
      One sentence per problem (an empty list when the windows fit).

    Examples:
      >>> problems = timeline_problems(PruningConfig(
      ...     begin_pruning_step=1000, sparsity_function_end_step=100))
      >>> len(problems), problems[0][:60]
      (1, 'the sparsity function ends at sparsity_function_end_step=100')
    """
    first = first_update_step(config)
    if first is None:
        return [
            f"no mask update can happen: the legacy rule last_update + pruning_frequency <= "
            f"step (last_update starts at 0) first holds at step "
            f"{max(config.begin_pruning_step, config.pruning_frequency)}, after "
            f"end_pruning_step={config.end_pruning_step}; lower pruning_frequency or raise "
            "end_pruning_step"
        ]
    problems = []
    sf_begin, sf_end = config.sparsity_function_begin_step, config.sparsity_function_end_step
    ramps = config.initial_sparsity != config.target_sparsity
    if sf_end < first and ramps:
        problems.append(
            f"the sparsity function ends at sparsity_function_end_step={sf_end}, before the "
            f"first mask update at step {first} (begin_pruning_step="
            f"{config.begin_pruning_step}, pruning_frequency={config.pruning_frequency}): "
            f"target_sparsity={config.target_sparsity} is applied all at once at that update; "
            "for a gradual ramp, put the sparsity function's window inside the pruning window"
        )
    end = config.end_pruning_step
    if end != -1 and ramps:
        # Updates follow each other every pruning_frequency steps from the first, up to end.
        last = first + (end - first) // config.pruning_frequency * config.pruning_frequency
        if sf_begin >= last:
            problems.append(
                f"the sparsity function begins at sparsity_function_begin_step={sf_begin}, at "
                f"or after the last mask update at step {last} (end_pruning_step={end}, "
                f"pruning_frequency={config.pruning_frequency}): every mask update applies "
                f"initial_sparsity={config.initial_sparsity}, never "
                f"target_sparsity={config.target_sparsity}"
            )
    return problems


def warn_timeline(config: PruningConfig, stacklevel: int = 2) -> None:
    """Emits a :class:`PruningConfigWarning` for each of :func:`timeline_problems`."""
    for problem in timeline_problems(config):
        warnings.warn(f"PruningConfig: {problem}", PruningConfigWarning, stacklevel=stacklevel + 1)


_INT_FIELDS = (
    "begin_pruning_step",
    "end_pruning_step",
    "pruning_frequency",
    "nbins",
    "block_height",
    "block_width",
    "sparsity_function_begin_step",
    "sparsity_function_end_step",
)
_FLOAT_FIELDS = (
    "threshold_decay",
    "initial_sparsity",
    "target_sparsity",
    "sparsity_function_exponent",
)
_LIST_FIELDS = ("weight_sparsity_map", "block_dims_map")
_STR_FIELDS = ("name", "block_pooling_function", "threshold")
_DEFAULT = PruningConfig()
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(PruningConfig))


def _format_value(field: str, value: Any) -> str:
    if field == "weight_sparsity_map":
        return "[" + ",".join(f"{rx}:{v!r}" for rx, v in value) + "]"
    if field == "block_dims_map":
        return "[" + ",".join(f"{rx}:{h}x{w}" for rx, (h, w) in value) + "]"
    if isinstance(value, float):
        return repr(value)  # the shortest string that reads back as the same float
    return str(value)


def _parse_bool(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"could not parse {name}: expected true or false, got {text!r}")


def _split_hparams(hparams: str) -> list[tuple[str, str, bool]]:
    """``[(name, value, is_list)]``, split as ``tf.HParams.parse`` splits its string."""
    out = []
    pos, n = 0, len(hparams)
    while pos < n:
        while pos < n and hparams[pos].isspace():
            pos += 1
        if pos == n:
            break
        eq = hparams.find("=", pos)
        comma = hparams.find(",", pos)
        if eq < 0 or (0 <= comma < eq):
            end = n if comma < 0 else comma
            raise ValueError(
                f"malformed hyperparameter {hparams[pos:end].strip()!r} in {hparams!r}: "
                "expected name=value"
            )
        key = hparams[pos:eq].strip()
        pos = eq + 1
        while pos < n and hparams[pos] in " \t":
            pos += 1
        if pos < n and hparams[pos] == "[":
            close = hparams.find("]", pos)
            if close < 0:
                raise ValueError(f"could not parse {key}: unterminated list in {hparams!r}")
            value, is_list = hparams[pos + 1 : close], True
            pos = close + 1
            rest = hparams[pos:].lstrip(" \t")
            if rest and not rest.startswith(","):
                raise ValueError(
                    f"could not parse {key}: unexpected {rest.split(',')[0]!r} after its list"
                )
            pos = n - len(rest) + 1
        else:
            end = hparams.find(",", pos)
            end = n if end < 0 else end
            value, is_list = hparams[pos:end].strip(), False
            if "[" in value or "]" in value:
                raise ValueError(f"could not parse {key}: stray bracket in {value!r}")
            pos = end + 1
        out.append((key, value, is_list))
    return out


def _parse_values(hparams: str) -> dict[str, Any]:
    if not isinstance(hparams, str):
        raise TypeError(f"hparams must be a str, got {hparams!r}")
    values: dict[str, Any] = {}
    for key, text, is_list in _split_hparams(hparams):
        if not _KEY.match(key):
            raise ValueError(f"malformed hyperparameter name {key!r} in {hparams!r}")
        if key not in _FIELD_NAMES:
            raise ValueError(
                f"unknown hyperparameter {key!r}: PruningConfig has {', '.join(_FIELD_NAMES)}"
            )
        if key in values:
            raise ValueError(f"multiple assignments to hyperparameter {key!r} in {hparams!r}")
        if (key in _LIST_FIELDS) != is_list:
            if is_list:
                raise ValueError(f"could not parse {key}: it takes one value, not a list")
            raise ValueError(f"could not parse {key}: it is a list, write {key}=[regex:value,...]")
        if key in _LIST_FIELDS:
            # Entries are separated by commas or spaces; empty ones are dropped.
            entries = [e for e in re.split(r"[\s,]+", text) if e]
            what = "sparsity" if key == "weight_sparsity_map" else "HxW"
            values[key] = [_split_entry(e, key, what) for e in entries]
        elif key in _INT_FIELDS:
            values[key] = _parse_int(text, key)
        elif key in _FLOAT_FIELDS:
            values[key] = _parse_float(text, key)
        elif key == "use_tpu":
            values[key] = _parse_bool(text, key)
        else:
            values[key] = text
    return values
