"""Pruning schedules: ``schedule(step) -> (should_prune, sparsity)``.

The functions :func:`polynomial_decay`, :func:`constant_sparsity` and
:func:`schedule_from_optax`, and the base class :class:`PruningSchedule`, are also at the top
level; the classes they return (:class:`PolynomialDecay`, :class:`ConstantSparsity`,
:class:`OptaxSparsity`) live here. A schedule written with tfmot's step numbers goes through
:func:`jaxprune.tf.from_tfmot`.
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.schedules import ConstantSparsity
from jaxprune._src.schedules import OptaxSparsity
from jaxprune._src.schedules import PolynomialDecay
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.schedules import constant_sparsity
from jaxprune._src.schedules import polynomial_decay
from jaxprune._src.schedules import schedule_from_optax

__all__ = [
    "ConstantSparsity",
    "OptaxSparsity",
    "PolynomialDecay",
    "PruningSchedule",
    "constant_sparsity",
    "polynomial_decay",
    "schedule_from_optax",
]
