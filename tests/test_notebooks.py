"""The notebooks in ``examples/notebooks`` run end to end, and are committed clean.

Each notebook is executed with ``nbclient`` in a Jupyter kernel started from this test's own
Python (``sys.executable``, the project's virtual environment), with
``JAXPRUNE_NOTEBOOK_QUICK=1`` so that their step counts shrink, on the CPU, with a time limit
per cell; any cell that raises fails the test. The three notebooks run concurrently, in three
kernels, to keep the file's wall time down (most of each run is imports and compilation).
"""

import asyncio
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
NAMES = ["quickstart", "migrating_from_tensorflow", "fisher_pruning"]
CELL_TIMEOUT_S = 120  # per cell; none takes more than 10 s on a loaded 2-core CPU
COLAB = "https://colab.research.google.com/github/jaxprune/jaxprune/blob/main/examples/notebooks/"
KERNEL = "jaxprune-notebook-test"
# Prepended to each notebook: which Python runs the kernel, and the settings it sees.
PROBE = """
import json, os, sys
print(json.dumps([sys.executable, sys.prefix, os.environ.get("JAXPRUNE_NOTEBOOK_QUICK")]))
"""


def _read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _kernel_manager(kernel_dir: Path) -> AsyncKernelManager:
    """A kernel that runs this interpreter, whatever kernelspecs the machine has installed."""
    spec = kernel_dir / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    sys.executable,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                    "--InteractiveShell.colors=nocolor",  # plain tracebacks in failures
                ],
                "display_name": "jaxprune notebook tests",
                "language": "python",
                "env": {
                    "JAXPRUNE_NOTEBOOK_QUICK": "1",
                    "JAX_PLATFORMS": "cpu",
                    # As tests/conftest.py sets for the test suite: no implicit rank promotion.
                    "JAX_NUMPY_RANK_PROMOTION": "raise",
                    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                },
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    # IPC sockets in the temporary folder rather than TCP ports: no port races with other jobs
    # on the machine, and no warning about unencrypted TCP from the kernel.
    return AsyncKernelManager(
        kernel_name=KERNEL, kernel_spec_manager=specs, transport="ipc", ip=str(kernel_dir / "ipc")
    )


async def _run_all(tmp: Path) -> dict:
    async def run(name):
        nb = _read(name)
        nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
        workdir = tmp / name
        workdir.mkdir()
        client = NotebookClient(
            nb,
            km=_kernel_manager(tmp / f"{name}-kernels"),
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
        )
        # The client does not own a kernel manager it is given: have it shut the kernel down.
        await client.async_execute(cleanup_kc=True)
        return nb

    results = await asyncio.gather(*(run(name) for name in NAMES), return_exceptions=True)
    return dict(zip(NAMES, results, strict=True))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook, executed (all at once, on first use): name -> notebook or exception."""
    return asyncio.run(_run_all(tmp_path_factory.mktemp("notebooks")))


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, executed):
    result = executed[name]
    if isinstance(result, BaseException):
        raise result  # nbclient's CellExecutionError names the cell and shows the traceback
    probe, *cells = result.cells
    # The kernel is this interpreter, in this environment (the virtual environment), in quick
    # mode. (Resolving links would not do: a venv's python links to the base interpreter.)
    assert json.loads(_text(probe)) == [sys.executable, sys.prefix, "1"]
    code = [c for c in cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # The device cell printed what jax found.
    assert "jax.devices()" in code[1].source
    assert "CpuDevice" in _text(code[1])


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean_and_opens_in_colab(name):
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"
        assert "execution" not in cell.metadata, f"{name}: a cell has execution timings"
    first_md = nb.cells[0]
    assert first_md.cell_type == "markdown"
    badge = re.search(r"\[!\[Open In Colab\]\([^)]+\)\]\(([^)]+)\)", first_md.source)
    assert badge and badge.group(1) == f"{COLAB}{name}.ipynb"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    # The first code cell installs jaxprune on Colab only; the second reads the quick switch.
    assert '"google.colab" in sys.modules' in code[0]
    assert "git+https://github.com/jaxprune/jaxprune" in code[0]
    assert 'os.environ.get("JAXPRUNE_NOTEBOOK_QUICK") == "1"' in code[1]
    assert nb.metadata.kernelspec.name == "python3"
