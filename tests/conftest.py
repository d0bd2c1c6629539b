"""The suite's order: the unit tests, the short chaos run, then the integration tests.

The chaos run (tests/chaos/test_chaos.py) takes a minute and a half on a private libvirtd of its own
and shares nothing with the unit tests, whose libvirt is a fake: it is started as the session
starts and its verdict taken once the unit tests are over, so that the two overlap instead of
adding up. The unit tests hold on a machine that a chaos run keeps busy, and a chaos run holds
beside them (docs/reliability.md); the integration tests, whose VMs share the machine's libvirtd
and QEMU with the chaos run's load, come after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.test_chaos import ChaosRun

TESTS = Path(__file__).parent
ORDER = (TESTS / "unit", TESTS / "chaos")
"""The directories whose tests run first, in this order; the others' follow."""


def _rank(item: pytest.Item) -> int:
    for rank, directory in enumerate(ORDER):
        if item.path.is_relative_to(directory):
            return rank
    return len(ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: within a directory, the order of collection


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path.is_relative_to(TESTS / "chaos") for item in session.items):
        session.config.stash[ChaosRun.KEY] = ChaosRun.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(ChaosRun.KEY, None)
    if run is not None:
        run.stop()
