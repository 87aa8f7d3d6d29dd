"""The code blocks of the docs run as they are.

Every fenced block whose info string is exactly ``python`` is executed on its own, in a fresh
namespace (blocks marked ``python tensorflow`` show TensorFlow code and are skipped). A block
that uses a ``jp.<name>`` or ``jp.<subpackage>.<name>`` that ``jaxprune`` does not export (or
exports only under a deprecated spelling) fails, naming the missing names: the docs never show an
API that does not exist.
"""

import re
import types
from pathlib import Path

import pytest

import jaxprune as jp

DOCS = Path(__file__).resolve().parent.parent / "docs"
FILES = ["migrating-from-tensorflow.md", "distributions.md", "oneshot.md"]
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks(name):
    text = (DOCS / name).read_text()
    out = []
    for match in _FENCE.finditer(text):
        if match.group(1).strip() == "python":
            line = text.count("\n", 0, match.start()) + 1
            out.append(pytest.param(match.group(2), id=f"{name}:{line}"))
    return out


CASES = [case for name in FILES for case in blocks(name)]


def test_the_docs_have_code_blocks():
    assert len(CASES) >= 10


# The public subpackages: jp.tf, jp.fisher, jp.flops, ...
SUBPACKAGES = {
    name: module
    for name, module in vars(jp).items()
    if isinstance(module, types.ModuleType)
    and not name.startswith("_")
    and module.__name__ == f"jaxprune.{name}"
}


def unknown_names(code):
    """The ``jp.x`` and ``jp.<subpackage>.x`` of ``code`` that jaxprune does not export."""
    missing = set()
    for first, second in re.findall(r"\bjp\.(\w+)(?:\.(\w+))?", code):
        if first in SUBPACKAGES:
            if second and second not in SUBPACKAGES[first].__all__:
                missing.add(f"{first}.{second}")
        elif first not in jp.__all__:
            missing.add(first)
    return sorted(missing)


def test_unknown_names_reads_subpackages():
    code = "jp.tf.PruningConfig, jp.fisher.nope, jp.PruningConfig, jp.PruningSchedule.validate_step"
    assert unknown_names(code) == ["PruningConfig", "fisher.nope"]


@pytest.mark.parametrize("code", CASES)
def test_code_block_runs(code):
    missing = unknown_names(code)
    if missing:
        pytest.fail(f"the block uses names jaxprune does not have: {', '.join(missing)}")
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
