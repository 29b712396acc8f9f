"""Every Envoy configuration the project ships loads in the real Envoy.

`--mode validate` loads the wasm and runs palisade's on_configure, so a
palisade configuration the filter would refuse fails here too.
"""

from __future__ import annotations

import subprocess

import harness

SHIPPED = ["envoy/envoy.yaml"]


def test_shipped_envoy_configs_validate():
    wasm = harness.wasm_path()  # fails clearly when the wasm is not built
    for path in SHIPPED:
        proc = subprocess.run(
            [str(harness.envoy_binary()), "--mode", "validate", "-c", path, "-l", "info", "--base-id", "9137"],
            cwd=harness.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{path} does not validate ({wasm}):\n{harness.tail(out, 30)}"
        assert "palisade: configured" in out, f"{path}: palisade's on_configure did not run:\n{harness.tail(out, 30)}"
