"""Several processes: JAX's multi-controller runtime, two CPU processes on localhost.

``multiprocess_check.py`` runs as processes 0 and 1 of one system of 8 CPU devices
(``jax.distributed.initialize``, 4 devices each), and at the same time as the reference: one
process with all 8 devices, running the same steps on the same mesh through the same runtime
and collectives (gloo). The masks and the params of the two processes, put together from
their shards, must be those of the one process, bit for bit.

(Against a process that never calls ``jax.distributed.initialize``, whose collectives are
XLA's in-process ones, only the masks were equal: the all-reduces add their partial sums in
another order, so the params differ in the last bits of float32, which Adam then amplifies to
about 1e-5. A mask could flip for the same reason, so that is not compared.)
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("multiprocess_check.py")
TIMEOUT = 420  # seconds for the three together: about 30 s of CPU each, on a busy machine
KERNELS = ("w1", "w2", "w3")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands, out):
    """Starts every command at once and waits for all; kills the rest when one fails."""
    # Each process sets its own device count; other flags (the suite's) pass on.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    procs = {}
    killed = []
    failed = None
    with contextlib.ExitStack() as files:
        try:
            for name, args in commands.items():
                procs[name] = subprocess.Popen(
                    [sys.executable, "-W", "error", str(SCRIPT), *args],
                    stdout=files.enter_context((out / f"{name}.out").open("w")),
                    stderr=files.enter_context((out / f"{name}.err").open("w")),
                    env=env,
                )
            deadline = time.monotonic() + TIMEOUT
            while any(p.poll() is None for p in procs.values()):
                if any(p.poll() for p in procs.values()):
                    break  # one failed: the others would wait for it forever
                if time.monotonic() > deadline:
                    failed = f"still running after {TIMEOUT} s"
                    break
                time.sleep(0.2)
        finally:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.kill()
                    killed.append(name)
                proc.wait()
    failed = failed or ", ".join(
        f"{n} exited with {p.returncode}"
        for n, p in procs.items()
        if p.returncode and n not in killed
    )
    if killed:
        failed += f"; killed {', '.join(killed)}"
    if failed:
        logs = "\n".join(
            f"--- {name} stderr ---\n{(out / f'{name}.err').read_text()[-6000:]}" for name in procs
        )
        raise AssertionError(f"{failed}\n{logs}")


def load(path):
    with np.load(path) as f:
        return dict(f)


def assemble(*paths):
    """Each leaf put together from the shards the processes held (every element held by one).

    Returns the leaves and, per file, which elements of each leaf that process held.
    """
    files = [load(p) for p in paths]
    leaves = {}
    for name in files[0]:
        if name.startswith("held"):
            continue
        value = np.zeros_like(files[0][name])
        covered = np.zeros(value.shape, bool)
        for f in files:
            held = f[f"held{name}"]
            # Where both processes hold an element (a replica), they agree, bit for bit.
            both = held & covered
            np.testing.assert_array_equal(f[name][both], value[both], err_msg=name)
            value[held] = f[name][held]
            covered |= held
        assert covered.all(), name
        leaves[name] = value
    return leaves, [{k: v for k, v in f.items() if k.startswith("held")} for f in files]


def test_two_processes_prune_like_one(tmp_path):
    port, reference_port = free_port(), free_port()
    run_all(
        {
            "process0": ["child", "0", str(port), str(tmp_path)],
            "process1": ["child", "1", str(port), str(tmp_path)],
            "reference": ["reference", str(reference_port), str(tmp_path)],
        },
        tmp_path,
    )
    for scope in ("layer", "global"):
        got, held = assemble(*(tmp_path / f"process{i}-{scope}.npz" for i in (0, 1)))
        want, _ = assemble(tmp_path / f"reference-{scope}.npz")
        assert got.keys() == want.keys()
        for name in got:
            assert got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{scope} {name}")
        for kernel in KERNELS:
            params, mask = got[f"['params']['{kernel}']"], got[f"['masks']['{kernel}']"]
            assert mask.dtype == np.bool_
            assert not params[~mask].any(), (scope, kernel)  # pruned weights are exactly zero
            for leaf in (f"['params']['{kernel}']", f"['masks']['{kernel}']"):
                # No process held a whole kernel, nor a whole mask.
                assert not any(h[f"held{leaf}"].all() for h in held), (scope, leaf)
        pruned = sum(int((~got[f"['masks']['{k}']"]).sum()) for k in KERNELS)
        size = sum(got[f"['masks']['{k}']"].size for k in KERNELS)
        assert abs(pruned / size - 0.8) < 0.01, (scope, pruned / size)
        zeros = {n[len("['params']['") : -2]: got[n] == 0 for n in got if "params" in n}
        for i in (0, 1):
            info = json.loads((tmp_path / f"process{i}.json").read_text())["runs"][scope]
            # jp.sparsity_summary and jp.check_pruned_zero, called in both processes.
            for leaf, z in zeros.items():
                assert info["summary"][leaf] == z.sum() / z.size, (scope, leaf)
            assert info["summary"]["pruned"] == sum(int(zeros[k].sum()) for k in KERNELS) / size
            assert info["not_zero"].startswith(f"{pruned} pruned weights are not zero"), info

    for i in (0, 1):
        report = json.loads((tmp_path / f"process{i}.json").read_text())
        assert report["cpu_collectives"] == "gloo"
        for scope, info in report["runs"].items():
            # The process checked its compiled step: no all-gather of a weight, and the
            # pruning histograms all-reduced.
            assert info["histogram_all_reduces"] > 0, scope
            assert not info["fully_addressable"], scope
        assert report["runs"]["global"]["checkpoint_leaves"] > 0
