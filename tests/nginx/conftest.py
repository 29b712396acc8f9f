"""pytest fixtures for the NGINX end-to-end suite (tests/nginx/test_ngx_*.py).

``upstream`` is a :class:`nginx_host.RecordingUpstream` (the application
behind nginx). ``nginx`` is a factory fixture: ``nginx(config, upstream=None,
**kwargs)`` starts a fresh nginx with 2 worker processes running palisade
with ``config`` in front of ``upstream`` (the test's ``upstream`` fixture when
not given) and returns the :class:`nginx_host.NginxInstance` once it serves.

After the test every nginx is checked, then stopped: an ``[emerg]``,
``[alert]`` or ``[crit]`` line in its error log, a worker that exited
(outside a reload's retirement) or a missing worker fails the test, whatever
its requests got. When the test failed, the tail of each error log is printed
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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def nginx_artefacts() -> tuple[Path, Path]:
    """Fail (not skip) every test with a clear message when something is missing."""
    try:
        return nginx_host.nginx_binary(), harness.wasm_path()
    except harness.HarnessError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def upstream():
    server = nginx_host.RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def nginx(request, upstream, nginx_artefacts):
    instances: list[nginx_host.NginxInstance] = []

    def factory(
        config: dict | str, upstream_server: nginx_host.RecordingUpstream | None = None, **kwargs
    ) -> nginx_host.NginxInstance:
        inst = nginx_host.NginxInstance(config, (upstream_server or upstream).port, **kwargs)
        instances.append(inst)
        try:
            return inst.start()
        except harness.HarnessError as e:
            problem = str(e)
        pytest.fail(problem, pytrace=False)

    yield factory

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    broken = []
    for inst in instances:
        bad = inst.problems()  # before stopping: a stop makes every worker exit
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
