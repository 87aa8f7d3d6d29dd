"""Pruning schedules: when to prune, and to what sparsity.

A schedule is called as ``schedule(step) -> (should_prune, sparsity)`` with a Python int or a
traced integer step, and returns JAX scalars (``bool`` and ``float32``). The built-in schedules
reproduce TensorFlow Model Optimization's ``PolynomialDecay`` and ``ConstantSparsity`` exactly:
the same values (computed in float32), the same should-prune rule and the same validation
conditions, raised as ``ValueError`` when the schedule is built.

The should-prune rule shared by every windowed schedule::

    in_range     = step >= begin_step and (step <= end_step or end_step == -1)
    should_prune = in_range and (step - begin_step) % frequency == 0

The window is closed at both ends and pruning turns are anchored at ``begin_step``; ``end_step``
itself is a turn only when ``(end_step - begin_step) % frequency == 0``.

Steps: inside :func:`jaxprune.magnitude_pruning` the schedule sees optax's update count, so the
first update is step 0. TensorFlow's Keras wrapper adds 1 to its step before each training batch,
so tfmot calls its schedule with step 1 on the first batch: tfmot's batch of step ``t + 1`` is
jaxprune's update ``t``. :func:`jaxprune.tf.from_tfmot` puts a schedule written with tfmot's
numbers on jaxprune's, exactly (values and turns), with no TensorFlow needed.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src.base import Array, ArrayLike

# Steps are int32 inside the transformations (optax's update count): a window or frequency
# beyond it could never be reached, and JAX would only fail on it at the first update.
INT32_MAX = 2**31 - 1

__all__ = [
    "PruningSchedule",
    "PolynomialDecay",
    "ConstantSparsity",
    "OptaxSparsity",
    "polynomial_decay",
    "constant_sparsity",
    "schedule_from_optax",
]


def _as_step(step: ArrayLike) -> Array:
    step = jnp.asarray(step)
    if not jnp.issubdtype(step.dtype, jnp.integer):
        raise TypeError(f"step must be an integer, got dtype {step.dtype}")
    if jnp.issubdtype(step.dtype, jnp.unsignedinteger):
        step = step.astype(jnp.int32)  # step - begin_step must be able to go below zero
    return step


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


class PruningSchedule(abc.ABC):
    """Base class of pruning schedules.

    Subclasses implement :meth:`__call__` and may use the helpers below, which have the names and
    behaviour of ``tfmot.sparsity.keras.PruningSchedule``'s (the underscore names are kept for
    code ported from TensorFlow).

    Example, a schedule that prunes every 10 steps to a sparsity that grows linearly:

    >>> import jax.numpy as jnp
    >>> import jaxprune as jp
    >>> class Linear(jp.PruningSchedule):
    ...     def __init__(self, final, end_step):
    ...         self.validate_step(0, end_step, 10, allow_negative_1=False)
    ...         self.validate_sparsity(final, "final")
    ...         self.final, self.end_step = final, end_step
    ...     def __call__(self, step):
    ...         p = jnp.minimum(jnp.asarray(step, jnp.float32) / self.end_step, 1.0)
    ...         return self.should_prune_in_step(step, 0, self.end_step, 10), self.final * p
    >>> should_prune, sparsity = Linear(0.8, 100)(50)
    >>> bool(should_prune), float(sparsity)
    (True, 0.4000000059604645)
    """

    @abc.abstractmethod
    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        """Returns ``(should_prune, sparsity)`` as a JAX bool and a float32 scalar."""

    @property
    def final_sparsity_value(self) -> float | None:
        """The sparsity this schedule ends at, if it has one (used to rescale per-leaf targets)."""
        return None

    @staticmethod
    def should_prune_in_step(
        step: ArrayLike, begin_step: int, end_step: int, frequency: int
    ) -> Array:
        """Whether ``step`` is a pruning turn of the window ``[begin_step, end_step]``.

        ``end_step = -1`` (any negative value) means the window never closes.
        """
        step = _as_step(step)
        in_range = step >= begin_step
        if end_step >= 0:
            in_range = jnp.logical_and(in_range, step <= end_step)
        # jnp.remainder is a floor modulo, as tf.math.floormod.
        is_turn = jnp.remainder(step - begin_step, frequency) == 0
        return jnp.logical_and(in_range, is_turn)

    @staticmethod
    def validate_step(
        begin_step: int, end_step: int, frequency: int, allow_negative_1: bool
    ) -> None:
        """Raises ``ValueError`` for a bad window, in tfmot's order of checks.

        Then jaxprune's own: steps and frequency must fit in an int32 (``begin_step`` and
        ``end_step`` at most ``2**31 - 1``), since the transformations count updates in int32.
        """
        begin_step = _check_int(begin_step, "begin_step")
        end_step = _check_int(end_step, "end_step")
        frequency = _check_int(frequency, "frequency")
        if begin_step < 0:
            raise ValueError(f"begin_step should be >= 0, got {begin_step}")
        if not allow_negative_1 and end_step == -1:
            raise ValueError("end_step cannot be -1: give the last step of the schedule (>= 0)")
        if end_step != -1 and end_step < 0:
            raise ValueError(f"end_step can be -1 or >= 0, got {end_step}")
        if end_step != -1 and end_step < begin_step:
            raise ValueError(
                "begin_step should be <= end_step if end_step != -1, "
                f"got begin_step={begin_step}, end_step={end_step}"
            )
        if frequency <= 0:
            raise ValueError(f"frequency should be > 0, got {frequency}")
        for name, value in (("begin_step", begin_step), ("end_step", end_step)):
            if value > INT32_MAX:
                raise ValueError(
                    f"{name} must be at most {INT32_MAX} (steps are int32: -1 or in "
                    f"[0, {INT32_MAX}]), got {value}"
                )
        if frequency > INT32_MAX:
            raise ValueError(
                f"frequency must be in [1, {INT32_MAX}] (steps are int32), got {frequency}"
            )

    @staticmethod
    def validate_sparsity(sparsity: float, variable_name: str) -> None:
        """Raises ``ValueError`` unless ``0 <= sparsity < 1``."""
        if isinstance(sparsity, (bool, str)) or np.ndim(sparsity) != 0:
            raise TypeError(f"{variable_name} must be a float, got {sparsity!r}")
        try:
            sparsity = float(sparsity)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{variable_name} must be a float, got {sparsity!r}") from e
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"{variable_name} must be in range [0,1), got {sparsity!r}")

    def _window_turn(self, step: ArrayLike) -> Array:
        # The built-in schedules keep their window as begin_step, end_step and frequency.
        return self.should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)

    # The names tfmot's base class uses, for subclasses ported from TensorFlow.
    _should_prune_in_step = should_prune_in_step
    _validate_step = validate_step
    _validate_sparsity = validate_sparsity

    def get_config(self) -> dict[str, Any]:
        """``{'class_name': ..., 'config': {...}}`` as tfmot's schedules return."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_config()")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruningSchedule:
        """Builds the schedule from the ``config`` part of :meth:`get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        except NotImplementedError:
            return object.__repr__(self)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        try:
            return self.get_config() == other.get_config()  # type: ignore[union-attr]
        except NotImplementedError:
            return self is other

    def __hash__(self) -> int:
        try:
            return hash((type(self), tuple(sorted(self.get_config()["config"].items()))))
        except (NotImplementedError, TypeError):
            return id(self)


class PolynomialDecay(PruningSchedule):
    r"""Sparsity that follows a polynomial decay, as tfmot's ``PolynomialDecay``.

    .. math::

        p = \mathrm{clip}\left(\frac{step - begin}{end - begin}, 0, 1\right), \qquad
        s = (s_{initial} - s_{final}) (1 - p)^{power} + s_{final}

    computed in float32 (within two ulps of TensorFlow's: XLA may fuse the last multiply-add
    under ``jit``). The value is returned at every step (it is not quantised to the
    frequency grid); only ``should_prune`` looks at ``frequency``. When
    ``(end_step - begin_step) % frequency != 0`` the last pruning turn falls before
    ``end_step``, so ``final_sparsity`` is never applied, exactly as in tfmot.

    Unlike tfmot, ``begin_step == end_step`` gives a step function (``final_sparsity`` from
    ``begin_step`` on) instead of NaN at that step.
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3.0,
        frequency: int = 100,
    ):
        self.validate_step(begin_step, end_step, frequency, allow_negative_1=False)
        self.validate_sparsity(initial_sparsity, "initial_sparsity")
        self.validate_sparsity(final_sparsity, "final_sparsity")
        if isinstance(power, bool) or not isinstance(power, (int, float, np.floating)):
            raise TypeError(f"power must be a float, got {power!r}")
        if not (power > 0 and math.isfinite(power)):
            raise ValueError(f"power must be > 0 and finite, got {power!r}")
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = power
        self.frequency = int(frequency)

    @property
    def final_sparsity_value(self) -> float:
        return float(self.final_sparsity)

    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        step = _as_step(step)
        if self.end_step == self.begin_step:
            p = (step >= self.begin_step).astype(jnp.float32)
        else:
            span = jnp.float32(self.end_step - self.begin_step)
            p = (step - self.begin_step).astype(jnp.float32) / span
            p = jnp.minimum(jnp.float32(1.0), jnp.maximum(jnp.float32(0.0), p))
            # Exact ends even where XLA divides by a reciprocal (vectorised steps on CPU).
            p = jnp.where(step >= self.end_step, jnp.float32(1.0), p)
        # tfmot forms (initial - final) in double precision, then casts it to float32.
        scale = jnp.float32(self.initial_sparsity - self.final_sparsity)
        base = jnp.float32(1.0) - p
        if float(self.power).is_integer():
            # Repeated multiplication: bit-identical under jit and eager (XLA's fused pow is
            # not), and within 1 ulp of TensorFlow's pow.
            decay = lax.integer_pow(base, int(self.power))
        else:
            decay = jnp.power(base, jnp.float32(self.power))
        # Under jit XLA may fuse this multiply-add (one rounding instead of two), so a jitted
        # value can differ from the eager one, and from TensorFlow's, by an ulp or two.
        sparsity = scale * decay + jnp.float32(self.final_sparsity)
        should_prune = self._window_turn(step)
        return should_prune, sparsity

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "PolynomialDecay",
            "config": {
                "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "power": self.power,
                "frequency": self.frequency,
            },
        }


class ConstantSparsity(PruningSchedule):
    """A constant sparsity applied on every turn of a window, as tfmot's ``ConstantSparsity``.

    The returned sparsity is ``target_sparsity`` at every step, even outside the window.
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int = 0,
        end_step: int = -1,
        frequency: int = 100,
    ):
        self.validate_step(begin_step, end_step, frequency, allow_negative_1=True)
        self.validate_sparsity(target_sparsity, "target_sparsity")
        self.target_sparsity = target_sparsity
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    @property
    def final_sparsity_value(self) -> float:
        return float(self.target_sparsity)

    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        should_prune = self._window_turn(step)
        return should_prune, jnp.float32(self.target_sparsity)

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "ConstantSparsity",
            "config": {
                "target_sparsity": self.target_sparsity,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "frequency": self.frequency,
            },
        }


class OptaxSparsity(PruningSchedule):
    """Any optax schedule (count → sparsity) used as the sparsity curve inside a window.

    The optax schedule is called with ``step - begin_step``, held at 0 before the window and at
    ``end_step - begin_step`` after it, so ``optax.linear_schedule(0.0, 0.9, 1000)`` with
    ``begin_step=500`` ramps from step 500 to step 1500.
    """

    def __init__(
        self,
        schedule: Callable[[ArrayLike], ArrayLike],
        begin_step: int = 0,
        end_step: int = -1,
        frequency: int = 100,
    ):
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (step -> sparsity), got {schedule!r}")
        self.validate_step(begin_step, end_step, frequency, allow_negative_1=True)
        self.schedule = schedule
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        # Check the curve where it can be checked without tracing: its two ends.
        ends = [0] if self.end_step == -1 else [0, self.end_step - self.begin_step]
        for count in ends:
            value = float(np.asarray(schedule(count)))
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"schedule must return sparsities in [0, 1]; schedule({count}) = {value!r}"
                )
        self._final = None if self.end_step == -1 else float(np.asarray(schedule(ends[-1])))

    @property
    def final_sparsity_value(self) -> float | None:
        return self._final

    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        step = _as_step(step)
        count = jnp.maximum(step - self.begin_step, 0)
        if self.end_step != -1:
            count = jnp.minimum(count, self.end_step - self.begin_step)
        sparsity = jnp.asarray(self.schedule(count), jnp.float32)
        should_prune = self._window_turn(step)
        return should_prune, sparsity

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "OptaxSparsity",
            "config": {
                "schedule": self.schedule,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "frequency": self.frequency,
            },
        }

    def __hash__(self) -> int:
        return hash((OptaxSparsity, id(self.schedule), self.begin_step, self.end_step))


def polynomial_decay(
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    *,
    power: float = 3.0,
    frequency: int = 100,
) -> PolynomialDecay:
    r"""A schedule whose sparsity decays polynomially from ``initial`` to ``final`` sparsity.

    Values, should-prune rule and validation are those of tfmot's ``PolynomialDecay``:

    .. math::

        s(step) = (s_i - s_f) \left(1 - \mathrm{clip}\left(\tfrac{step - b}{e - b}, 0, 1\right)
        \right)^{power} + s_f

    and masks are updated on steps ``b, b + frequency, ...`` up to ``e`` inclusive.

    Args:
      initial_sparsity: sparsity at and before ``begin_step``, in ``[0, 1)``.
      final_sparsity: sparsity at and after ``end_step``, in ``[0, 1)``.
      begin_step: first pruning step, ``>= 0``.
      end_step: last step of the decay, ``>= begin_step`` (``-1`` is not allowed).
      power: exponent of the decay, ``> 0`` (3 is the cubic schedule of Zhu & Gupta 2017).
      frequency: steps between mask updates, ``> 0``.

    Returns:
      A :class:`PolynomialDecay` schedule: ``schedule(step) -> (should_prune, sparsity)``.

    Raises:
      ValueError: for an argument outside its range (the message names it).

    Examples:
      >>> import jaxprune as jp
      >>> schedule = jp.polynomial_decay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
      >>> should_prune, sparsity = schedule(500)
      >>> bool(should_prune), round(float(sparsity), 4)
      (True, 0.7875)

    References:
      Zhu & Gupta, `To prune, or not to prune <https://arxiv.org/abs/1710.01878>`_, 2017.
    """
    return PolynomialDecay(
        initial_sparsity, final_sparsity, begin_step, end_step, power=power, frequency=frequency
    )


def constant_sparsity(
    target_sparsity: float,
    begin_step: int = 0,
    end_step: int = -1,
    *,
    frequency: int = 100,
) -> ConstantSparsity:
    """A schedule that prunes to ``target_sparsity`` on every turn of its window.

    Args:
      target_sparsity: the sparsity, in ``[0, 1)``.
      begin_step: first pruning step, ``>= 0``.
      end_step: last pruning step (inclusive), ``>= begin_step``, or ``-1`` for no end.
      frequency: steps between mask updates, ``> 0``.

    Returns:
      A :class:`ConstantSparsity` schedule.

    Raises:
      ValueError: for an argument outside its range (the message names it).

    Examples:
      >>> import jaxprune as jp
      >>> schedule = jp.constant_sparsity(0.5, begin_step=10, frequency=5)
      >>> [bool(schedule(s)[0]) for s in (5, 10, 14, 15)]
      [False, True, False, True]
    """
    return ConstantSparsity(target_sparsity, begin_step, end_step, frequency=frequency)


def schedule_from_optax(
    schedule: Callable[[ArrayLike], ArrayLike],
    *,
    begin_step: int = 0,
    end_step: int = -1,
    frequency: int = 100,
) -> OptaxSparsity:
    """Uses an optax schedule (count → sparsity) as the sparsity curve of a pruning window.

    Args:
      schedule: e.g. ``optax.linear_schedule(0.0, 0.8, 1000)``; called with
        ``step - begin_step`` (held within the window). Its values must lie in ``[0, 1]``
        (checked at both ends of the window).
      begin_step: first pruning step, ``>= 0``.
      end_step: last pruning step (inclusive), ``>= begin_step``, or ``-1`` for no end.
      frequency: steps between mask updates, ``> 0``.

    Returns:
      An :class:`OptaxSparsity` schedule.

    Examples:
      >>> import optax
      >>> import jaxprune as jp
      >>> schedule = jp.schedule_from_optax(
      ...     optax.linear_schedule(0.0, 0.8, 100), begin_step=50, end_step=150, frequency=10)
      >>> [round(float(schedule(s)[1]), 2) for s in (0, 50, 100, 150, 500)]
      [0.0, 0.0, 0.4, 0.8, 0.8]
    """
    return OptaxSparsity(schedule, begin_step, end_step, frequency)
