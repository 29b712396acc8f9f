"""pytest fixtures for the palisade Envoy integration tests.

``envoy`` is a factory fixture: ``envoy(config, concurrency=2, extra_routes=None)``
starts a fresh Envoy (see harness.py) with the palisade wasm filter configured
with ``config`` (a dict, serialised to JSON, or a raw string), waits until it is
LIVE and returns the :class:`harness.EnvoyInstance`.  Every Envoy started by a
test is stopped after it; when the test failed, the tail of each Envoy log is
printed (pytest shows it under "Captured stdout teardown") and the full logs stay
in pytest's tmp dir.

A missing wasm or Envoy binary is an error, never a skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def artefacts() -> tuple[Path, Path]:
    """Fail (not skip) every test with a clear message when something is missing."""
    try:
        return harness.envoy_binary(), harness.wasm_path()
    except harness.HarnessError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def envoy(request, tmp_path, artefacts):
    instances: list[harness.EnvoyInstance] = []

    def factory(
        config: dict | str,
        concurrency: int = 2,
        extra_routes: list[dict] | None = None,
        **kwargs,
    ) -> harness.EnvoyInstance:
        inst = harness.EnvoyInstance(
            config,
            concurrency=concurrency,
            extra_routes=extra_routes,
            workdir=tmp_path / f"envoy{len(instances)}",
            **kwargs,
        )
        instances.append(inst)
        try:
            return inst.start()
        except harness.HarnessError as e:
            problem = str(e)
        pytest.fail(problem, pytrace=False)

    yield factory

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for inst in instances:
        inst.stop()
        if failed:
            print(f"\n===== Envoy log tail ({inst.log_path}) =====")
            print(inst.log_tail(80))


@pytest.fixture
def expect_failure(artefacts):
    """``expect_failure(config, mode="serve"|"validate") -> (exit_code, log_text)``."""
    return harness.start_expect_failure
