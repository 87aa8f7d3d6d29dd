"""The docs site's pages on frameworks, checkpoints and sharding run, and its API page is sound.

The ``python`` blocks of a page (info string exactly ``python``; other blocks, such as
``python multihost``, are shown only) run top to bottom in one namespace, as a reader would
paste them. ``sharding.md`` needs eight devices, so it runs in a process of its own. Building
the HTML itself is ``make docs``, which installs the ``docs`` extra.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxprune as jp

DOCS = Path(__file__).resolve().parent.parent / "docs"
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(page):
    text = (DOCS / page).read_text()
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).strip() == "python"]


@pytest.mark.parametrize("page", ["frameworks.md", "checkpoints.md", "logging.md"])
def test_page_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    assert blocks
    monkeypatch.chdir(tmp_path)  # pages that write files write them here
    namespace = {"__name__": "__docs__"}
    for code in blocks:
        exec(compile(code, str(DOCS / page), "exec"), namespace)


def test_sharding_page_runs(tmp_path):
    script = tmp_path / "sharding_page.py"
    script.write_text("\n\n".join(python_blocks("sharding.md")))
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_page_documents_only_public_names_once():
    text = (DOCS / "api.md").read_text()
    names = re.findall(r"^\.\. auto(?:function|class):: jaxprune\.(\w+)$", text, re.MULTILINE)
    assert names
    assert not [n for n in names if n not in jp.__all__], "not exported by jaxprune"
    assert len(names) == len(set(names)), "documented twice"
