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
import suite_support  # noqa: E402
from suite_support import pytest_runtest_makereport  # noqa: E402, F401  (the hook, found here by pytest)


@pytest.fixture(scope="session")
def artefacts() -> tuple[Path, ...]:
    """Fail (not skip) every test with a clear message when something is missing."""
    return suite_support.require_artefacts(harness.envoy_binary, harness.wasm_path)


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
        return suite_support.start_or_fail(inst)

    yield factory

    failed = suite_support.call_failed(request)
    leaks = []
    for inst in instances:
        # The secret audit (harness.py): what the test sent must not be in
        # palisade's answers, the log or the stats.
        stats = ""
        if inst.proc is not None and inst.proc.poll() is None:
            try:
                stats = inst.stats_text()
            except Exception as e:  # noqa: BLE001 - an Envoy the test broke
                stats = f"(stats unavailable: {e})"
        inst.stop()
        leaks += inst.leaked_secrets(stats)
        if failed:
            print(f"\n===== Envoy log tail ({inst.log_path}) =====")
            print(inst.log_tail(80))
    if leaks and not failed:
        pytest.fail("secrets leaked: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def expect_failure(artefacts):
    """``expect_failure(config, mode="serve"|"validate") -> (exit_code, log_text)``."""
    return harness.start_expect_failure
