"""pytest fixtures for the NGINX end-to-end suite (tests/nginx/test_ngx_*.py).

``upstream`` is a :class:`nginx_host.RecordingUpstream` (the application
behind nginx). ``nginx`` is a factory fixture: ``nginx(config, upstream=None,
healthy=True, **kwargs)`` starts a fresh nginx with 2 worker processes running
palisade with ``config`` in front of ``upstream`` (the test's ``upstream``
fixture when not given) and returns the :class:`nginx_host.NginxInstance`
once it serves (``kwargs`` are the instance's: ``shm_kv``, ``workers``, ...).

After the test every nginx is checked, then stopped: an ``[emerg]``,
``[alert]`` or ``[crit]`` line in its error log, a worker that exited
(outside a reload's retirement) or a missing worker fails the test, whatever
its requests got. ``healthy=False`` is for a test that expects nginx to
break: the factory returns as soon as the master runs (no wait for workers)
and the test, not the fixture, judges the error log. When the test failed, the tail of each error log is printed
and the run directory (target/nginx-test/run-*) is kept; otherwise it is removed.

A missing nginx or wasm is an error, never a skip. The Envoy suite's helpers
(harness.py, signing.py, test_jwt.py, ...) are importable: tests/integration
is on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import nginx_host  # noqa: E402
import suite_support  # noqa: E402
from suite_support import pytest_runtest_makereport  # noqa: E402, F401  (the hook, found here by pytest)


@pytest.fixture(scope="session")
def nginx_artefacts() -> tuple[Path, ...]:
    """Fail (not skip) every test with a clear message when something is missing."""
    return suite_support.require_artefacts(nginx_host.nginx_binary, harness.wasm_path)


@pytest.fixture
def upstream():
    server = nginx_host.RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def nginx(request, upstream, nginx_artefacts):
    instances: list[nginx_host.NginxInstance] = []

    expect_broken: set[int] = set()

    def factory(
        config: dict | str,
        upstream_server: nginx_host.RecordingUpstream | None = None,
        *,
        healthy: bool = True,
        **kwargs,
    ) -> nginx_host.NginxInstance:
        inst = nginx_host.NginxInstance(config, (upstream_server or upstream).port, **kwargs)
        instances.append(inst)
        if not healthy:
            expect_broken.add(id(inst))
        return suite_support.start_or_fail(inst, wait=healthy)

    yield factory

    failed = suite_support.call_failed(request)
    broken = []
    for inst in instances:
        # Before stopping: a stop makes every worker exit.
        bad = [] if id(inst) in expect_broken else inst.problems()
        inst.stop()
        if bad:
            broken.append(f"{inst.run_dir}:\n  " + "\n  ".join(bad[:20]))
        if failed or bad:
            print(f"\n===== nginx error log ({inst.error_log_path}) =====")
            print(inst.log_tail(80))
        else:
            inst.cleanup()
    if broken and not failed:  # a failed test is reported once (the log tail is printed above)
        pytest.fail("nginx broke during the test:\n" + "\n".join(broken), pytrace=False)
