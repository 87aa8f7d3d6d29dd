r"""tfmot's step numbers on jaxprune's update count (:func:`from_tfmot`, :class:`TfmotSchedule`).

Part of the TensorFlow-compatibility wing (:mod:`jaxprune.tf`); nothing in the core imports it.

TensorFlow's Keras wrapper adds 1 to its step before each training batch, so tfmot calls its
schedule with step 1 on the first batch, while jaxprune's transformations see optax's update
count, 0 on the first update: tfmot's batch of step ``t + 1`` is jaxprune's update ``t``.
:func:`from_tfmot` puts a schedule written with tfmot's numbers on jaxprune's, exactly (values
and turns), and builds jaxprune's twin of a tfmot schedule from its ``get_config()`` dict, with
no TensorFlow needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from jaxprune._src.base import Array, ArrayLike
from jaxprune._src.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule, _as_step

__all__ = ["TfmotSchedule", "from_tfmot"]


_TFMOT_CLASSES: dict[str, type[PruningSchedule]] = {
    "PolynomialDecay": PolynomialDecay,
    "ConstantSparsity": ConstantSparsity,
}


def _schedule_from_tfmot_config(config: Any) -> PruningSchedule:
    """Builds jaxprune's twin of a tfmot schedule from its ``get_config()`` dict."""
    if not isinstance(config, dict) or set(config) != {"class_name", "config"}:
        raise ValueError(
            "a tfmot schedule config must be the dict get_config() returns, "
            f"{{'class_name': ..., 'config': {{...}}}}; got {config!r}"
        )
    name, kwargs = config["class_name"], config["config"]
    if name not in _TFMOT_CLASSES:
        raise ValueError(
            f"class_name must be one of {sorted(_TFMOT_CLASSES)} (tfmot's schedules), got "
            f"{name!r}; port another schedule as a jaxprune.PruningSchedule subclass and pass it"
        )
    if not isinstance(kwargs, dict):
        raise TypeError(f"the 'config' of a {name} config must be a dict, got {kwargs!r}")
    try:
        return _TFMOT_CLASSES[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments in the config of {name}: {e}") from e


class TfmotSchedule(PruningSchedule):
    r"""A schedule written with tfmot's step numbers, on jaxprune's: update ``t`` is step ``t + 1``.

    TensorFlow's Keras wrapper adds 1 to its ``pruning_step`` (which starts at 0) before each
    training batch and calls the schedule with the new value, so batch ``t`` (counting from 0)
    sees tfmot step :math:`t + 1`; jaxprune's transformations count updates from 0. This
    schedule returns, at update ``t``, what the wrapped one returns at tfmot's step of that
    batch:

    .. math::

        \mathrm{TfmotSchedule}(s)(t) = s(t + 1)

    so both the pruning turns and the sparsities are tfmot's. For
    ``PolynomialDecay(s_i, s_f, b, e, power, f)`` that is: prune at update ``t`` when
    :math:`b \le t + 1 \le e` and :math:`(t + 1 - b) \bmod f = 0`, to
    :math:`(s_i - s_f)(1 - \mathrm{clip}((t + 1 - b)/(e - b), 0, 1))^{power} + s_f`.
    Shifting ``begin_step`` and ``end_step`` by one instead is exact only for
    ``begin_step >= 1``: tfmot never calls a schedule with step 0.

    At the largest int32 count (where optax's counter saturates) the wrapped schedule is
    called with that count itself rather than one more, which does not fit.

    ``final_sparsity_value`` and ``initial_sparsity`` (when the wrapped schedule has one) are
    the wrapped schedule's, so ``sparsity_map`` rescaling works as with the schedule itself.
    """

    def __init__(self, schedule: Callable[[ArrayLike], tuple[Array, Array]]):
        if isinstance(schedule, TfmotSchedule):
            raise ValueError(
                "schedule is already a TfmotSchedule (on jaxprune's step numbers); wrapping it "
                "again would shift its steps twice"
            )
        if not callable(schedule):
            raise TypeError(
                "schedule must be a PruningSchedule or a callable step -> (should_prune, "
                f"sparsity), got {schedule!r}"
            )
        self.schedule = schedule

    @property
    def final_sparsity_value(self) -> float | None:
        return getattr(self.schedule, "final_sparsity_value", None)

    @property
    def initial_sparsity(self) -> float:
        try:
            return self.schedule.initial_sparsity  # type: ignore[attr-defined]
        except AttributeError:
            raise AttributeError(
                f"{type(self.schedule).__name__} has no initial_sparsity"
            ) from None

    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        step = _as_step(step)
        top = jnp.iinfo(step.dtype).max
        tfmot_step = jnp.where(step < top, step + 1, step)
        return self.schedule(tfmot_step)

    def get_config(self) -> dict[str, Any]:
        return {"class_name": "TfmotSchedule", "config": {"schedule": self.schedule}}


def from_tfmot(schedule: Any) -> TfmotSchedule:
    r"""Runs a schedule written for tfmot's step numbers on jaxprune's update count, exactly.

    tfmot's Keras wrapper calls its schedule with step 1 on the first training batch; jaxprune's
    transformations call theirs with 0 on the first update. The returned schedule gives, at
    update ``t``, the wrapped schedule's ``(should_prune, sparsity)`` at tfmot's step
    :math:`t + 1`, the step tfmot uses for the same batch:

    .. math::

        (\mathrm{prune}_t, s_t) = \mathrm{schedule}(t + 1)

    :func:`jaxprune.magnitude_pruning` (with its default ``recompute_from="current"``) also
    ranks the masks on the weights at the start of the batch, as tfmot ranks them.

    Args:
      schedule: the schedule with tfmot's arguments: a :class:`PolynomialDecay`,
        :class:`ConstantSparsity` or any schedule ``step -> (should_prune, sparsity)``; or the
        dict of a tfmot schedule's ``get_config()``
        (``{"class_name": "PolynomialDecay", "config": {...}}``), or an object whose
        ``get_config()`` returns one (a tfmot schedule itself), which builds jaxprune's twin
        of that schedule.

    Returns:
      A :class:`TfmotSchedule`; its ``final_sparsity_value`` and ``initial_sparsity`` are the
      wrapped schedule's.

    Raises:
      TypeError: for something that is neither a schedule nor a tfmot config.
      ValueError: for a config of an unknown class or with values out of range, or a schedule
        that is already a :class:`TfmotSchedule`.

    Examples:
      >>> import jaxprune as jp
      >>> from jaxprune.tf import from_tfmot
      >>> # tfmot: PolynomialDecay(0.5, 0.8, begin_step=0, end_step=1000, frequency=100)
      >>> schedule = from_tfmot(jp.schedules.PolynomialDecay(0.5, 0.8, 0, 1000, frequency=100))
      >>> [t for t in range(300) if schedule(t)[0]]  # tfmot's batches at steps 100, 200, 300
      [99, 199, 299]
      >>> round(float(schedule(99)[1]), 4)  # tfmot's value at step 100
      0.5813
      >>> config = {"class_name": "ConstantSparsity",
      ...           "config": {"target_sparsity": 0.5, "begin_step": 0, "end_step": -1,
      ...                      "frequency": 3}}
      >>> [t for t in range(8) if from_tfmot(config)(t)[0]]  # tfmot's steps 3 and 6
      [2, 5]
    """
    if isinstance(schedule, dict):
        return TfmotSchedule(_schedule_from_tfmot_config(schedule))
    if not isinstance(schedule, PruningSchedule) and callable(
        getattr(schedule, "get_config", None)
    ):
        config = schedule.get_config()
        if isinstance(config, dict) and config.get("class_name") in _TFMOT_CLASSES:
            return TfmotSchedule(_schedule_from_tfmot_config(config))
    return TfmotSchedule(schedule)
