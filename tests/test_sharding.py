"""Multi-device behaviour, in a process of its own so the device count does not leak."""

import os
import subprocess
import sys
from pathlib import Path


def test_pruning_under_data_and_model_parallelism():
    script = Path(__file__).with_name("sharding_check.py")
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sharding check passed" in result.stdout
