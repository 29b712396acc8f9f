"""Fixtures of the deployment checks (`make check-deploy`).

Everything runs offline once `make deploy-setup` has installed the tools.
A missing tool or build output fails the test with the command that
provides it; nothing is skipped for lack of an artefact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploy  # noqa: E402


def _require(fn):
    try:
        return fn()
    except deploy.MissingTool as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def wasm() -> Path:
    if not deploy.WASM.is_file():
        pytest.fail(f"palisade wasm not found at {deploy.WASM}: run `make build`", pytrace=False)
    return deploy.WASM


@pytest.fixture(scope="session")
def palisade_check():
    """``palisade_check([json_text, ...]) -> [CheckResult]`` (one process)."""
    if not deploy.PALISADE_CHECK.is_file():
        pytest.fail(
            f"palisade-check not found at {deploy.PALISADE_CHECK}: run `cargo build --bin palisade-check`",
            pytrace=False,
        )
    return deploy.palisade_check


@pytest.fixture(scope="session")
def envoy() -> Path:
    path = _require(deploy.envoy_binary)
    if not path.is_file():
        pytest.fail(f"Envoy binary {path} does not exist: run `make setup`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def compose() -> Path:
    return _require(deploy.compose_binary)


@pytest.fixture(scope="session")
def kubernetes_validate() -> list[str]:
    return _require(deploy.kubernetes_validate)


@pytest.fixture(scope="session")
def node() -> str:
    return _require(deploy.node_binary)


@pytest.fixture(scope="session")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway localhost certificate and key (never the demo's)."""
    return _require(lambda: deploy.make_cert(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def device_ca(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway client CA and its key (never make mtls-certs' demo CA),
    for the demo's mutual-TLS listener."""
    return _require(lambda: deploy.make_device_ca(tmp_path_factory.mktemp("device-ca")))


@pytest.fixture(scope="session")
def kong_schema() -> dict:
    import json

    return json.loads(deploy.KONG_META.read_text())["config_schema"]
