"""The code blocks of the docs run as they are.

Every fenced block whose info string is exactly ``python`` is executed on its own, in a fresh
namespace (blocks marked ``python tensorflow`` show TensorFlow code and are skipped). A block
that uses a ``jp.<name>`` that ``jaxprune`` does not have fails, naming the missing names: the
docs never show an API that does not exist.
"""

import re
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


@pytest.mark.parametrize("code", CASES)
def test_code_block_runs(code):
    missing = sorted({n for n in re.findall(r"\bjp\.(\w+)", code) if not hasattr(jp, n)})
    if missing:
        pytest.fail(f"the block uses names jaxprune does not have: {', '.join(missing)}")
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
