"""The package layout: a small top level, public subpackages, and the 0.1.0 names kept working.

* Every name of jaxprune 0.1.0's top level still resolves. The ones that moved to a subpackage
  return the same object with a ``DeprecationWarning`` that names the new place, and are not
  listed in ``__all__`` or ``dir()``.
* The TensorFlow-compatibility wing (``jaxprune.tf`` and its private modules) is imported by
  nothing else in jaxprune: the core never depends on it.
"""

import ast
import re
import warnings
from pathlib import Path

import pytest

import jaxprune as jp

PACKAGE = Path(jp.__file__).resolve().parent

# jaxprune 0.1.0's __all__.
V010 = [
    "ACDCState", "BlockSparsity", "BlockedAxis", "ChannelMask", "ChannelMaskVariable",
    "ConstantSparsity", "DependencyGroups", "FisherPruningState", "FlopsReport", "Group",
    "LegacyPruningState", "MagnitudePruningState", "MovementPruningState", "NMSparsity",
    "NNXChannelMask", "OptaxSparsity", "PolynomialDecay", "PrunedWeightsNotZeroError",
    "PruningConfig", "PruningConfigWarning", "PruningSchedule", "RandomPruningState",
    "SparseAlgorithm", "SparseMaskState", "SparseState", "TfmotSchedule", "UnitSparsity",
    "UnknownEquation", "acdc", "apply_masks", "block_mask", "check_pruned_zero", "compact",
    "constant_sparsity", "count_flops", "default_rule", "dependency_groups", "erk_sparsities",
    "extend_masks", "fisher_batch_signals", "fisher_prune", "fisher_pruning", "fisher_signals",
    "fisher_value_and_grad", "flops_report", "from_tfmot", "get_masked_weights", "get_masks",
    "get_pruning_state", "get_thresholds", "get_weight_sparsity", "get_weights",
    "global_magnitude_masks", "group_masks", "group_scores", "group_weight_masks",
    "hessian_from_inputs", "load_sparse", "magnitude_mask", "magnitude_pruning", "magnitude_ste",
    "mask_channels", "masked_params", "movement_pruning", "nm_mask", "owl_sparsities",
    "per_example_mask_grads", "polynomial_decay", "prune_oneshot", "prune_units", "prune_weights",
    "pruning_from_config", "pruning_summaries", "random_pruning", "random_ste", "rigl",
    "saliency_pruning", "save_sparse", "schedule_from_optax", "set_training", "sparse",
    "sparsegpt_prune", "sparsity_summary", "sparsity_table", "static_sparse", "strip", "to_bcoo",
    "uniform_sparsities", "unit_mask", "update_fisher_signals", "wanda_mask",
]  # fmt: skip

# The names that left the top level, and their new home.
MOVED = {
    "PruningConfig": "tf",
    "PruningConfigWarning": "tf",
    "pruning_from_config": "tf",
    "LegacyPruningState": "tf",
    "get_thresholds": "tf",
    "get_weights": "tf",
    "get_masked_weights": "tf",
    "get_weight_sparsity": "tf",
    "from_tfmot": "tf",
    "TfmotSchedule": "tf",
    "FisherPruningState": "fisher",
    "fisher_prune": "fisher",
    "fisher_signals": "fisher",
    "update_fisher_signals": "fisher",
    "fisher_value_and_grad": "fisher",
    "per_example_mask_grads": "fisher",
    "fisher_batch_signals": "fisher",
    "mask_channels": "fisher",
    "extend_masks": "fisher",
    "ChannelMask": "fisher",
    "NNXChannelMask": "fisher",
    "ChannelMaskVariable": "fisher",
    "FlopsReport": "flops",
    "UnknownEquation": "flops",
    "PolynomialDecay": "schedules",
    "ConstantSparsity": "schedules",
    "OptaxSparsity": "schedules",
    "wanda_mask": "oneshot",
    "sparsegpt_prune": "oneshot",
    "hessian_from_inputs": "oneshot",
    "owl_sparsities": "oneshot",
    "group_weight_masks": "structural",
    "Group": "structural",
    "BlockedAxis": "structural",
    "DependencyGroups": "structural",
}

SUBPACKAGES = ["fisher", "flops", "oneshot", "schedules", "structural", "tf"]

# Names new at the top level since 0.1.0.
ADDED = {"register_pruning_state"}


def test_the_top_level_is_small_and_has_no_duplicates():
    assert len(jp.__all__) == len(set(jp.__all__))
    assert len(jp.__all__) <= 60
    assert set(jp.__all__) == (set(V010) - set(MOVED)) | ADDED


@pytest.mark.parametrize("name", sorted(MOVED))
def test_a_moved_name_still_resolves_with_a_deprecation_warning(name):
    subpackage = getattr(jp, MOVED[name])
    new = getattr(subpackage, name)
    assert name in subpackage.__all__
    assert name not in jp.__all__ and name not in dir(jp)
    message = f"jaxprune.{name} moved to jaxprune.{MOVED[name]}.{name}"
    with pytest.warns(DeprecationWarning, match=re.escape(message)) as caught:
        old = getattr(jp, name)
    assert old is new
    assert caught[0].filename == __file__  # the warning points at the user's line
    with pytest.warns(DeprecationWarning, match=re.escape(message)):
        exec(f"from jaxprune import {name} as old", namespace := {})
    assert namespace["old"] is new


def test_every_name_of_0_1_0_resolves():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = [name for name in V010 if not hasattr(jp, name)]
    assert not missing


def test_names_kept_at_the_top_level_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in jp.__all__:
            getattr(jp, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'prune_everything'"):
        jp.prune_everything  # noqa: B018
    assert not hasattr(jp, "prune_everything")


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_export_what_they_list(name):
    module = getattr(jp, name)
    assert module.__name__ == f"jaxprune.{name}"
    assert module.__all__ and len(module.__all__) == len(set(module.__all__))
    for attr in module.__all__:
        obj = getattr(module, attr)
        # A name that is both here and at the top level is one object.
        if attr in jp.__all__:
            assert getattr(jp, attr) is obj, attr


def test_every_public_name_has_one_home_at_least():
    homes = set(jp.__all__)
    for name in SUBPACKAGES:
        homes |= set(getattr(jp, name).__all__)
    assert set(V010) <= homes


# ----- the TensorFlow wing is imported by nothing outside it -----

WING = {
    "jaxprune.tf",
    "jaxprune._src.accessors",
    "jaxprune._src.config",
    "jaxprune._src.legacy",
    "jaxprune._src.tfmot",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in_wing(module: str) -> bool:
    return any(module == w or module.startswith(w + ".") for w in WING)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an ``import`` statement anywhere in ``tree`` may load."""
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, _module_name(path)


def test_the_wing_modules_exist():
    names = {name for _, name in _modules()}
    assert WING <= names


def test_nothing_outside_the_wing_imports_it():
    offenders = []
    for path, module in _modules():
        if _in_wing(module):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imported(tree, module, path.name == "__init__.py"):
            # The top level exposes the public namespace jaxprune.tf, as optax does contrib.
            if module == "jaxprune" and imported == "jaxprune.tf":
                continue
            if _in_wing(imported):
                offenders.append(f"{module} imports {imported}")
    assert not offenders, "the core must not depend on the TensorFlow wing:\n" + "\n".join(
        offenders
    )


def test_the_checker_sees_imports():
    # The AST walk finds plain, from- and relative imports, also inside functions.
    code = (
        "import jaxprune._src.legacy\n"
        "def f():\n"
        "    from jaxprune._src import config\n"
        "    from .accessors import get_weights\n"
    )
    found = _imported(ast.parse(code), "jaxprune._src.export", False)
    assert {"jaxprune._src.legacy", "jaxprune._src.config", "jaxprune._src.accessors"} <= found
