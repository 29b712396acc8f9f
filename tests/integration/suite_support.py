"""pytest plumbing shared by the two end-to-end suites' conftest.py files
(Envoy: tests/integration, NGINX: tests/nginx), so that both report a missing
artefact, a proxy that does not start and a failed test the same way.

* :func:`pytest_runtest_makereport` (imported into each conftest.py, where
  pytest finds it) keeps each phase's report on the test item
  (``item.rep_setup``, ``item.rep_call``, ...), so a fixture's teardown knows
  whether the test failed (:func:`call_failed`);
* :func:`require_artefacts` fails (never skips) every test with a clear
  message when a binary or the wasm is missing;
* :func:`start_or_fail` starts a proxy instance and turns a
  :class:`harness.HarnessError` into a plain failure (no traceback of the
  harness, the error says what went wrong and holds the log's tail).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

import harness


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def call_failed(request: pytest.FixtureRequest) -> bool:
    """In a fixture's teardown: whether the test itself (its call) failed."""
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


def require_artefacts(*finders: Callable[[], Path]) -> tuple[Path, ...]:
    """Each finder's path (e.g. ``harness.wasm_path``); fails the test, not
    skips it, with the finder's message when one is missing."""
    try:
        return tuple(find() for find in finders)
    except harness.HarnessError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)


S = TypeVar("S")


def start_or_fail(inst: S, **kwargs) -> S:
    """``inst.start(**kwargs)``; a :class:`harness.HarnessError` fails the test."""
    try:
        return inst.start(**kwargs)  # type: ignore[attr-defined]
    except harness.HarnessError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)
