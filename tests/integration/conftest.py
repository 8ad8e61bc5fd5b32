"""Fixtures for tests against a real Mosquitto started on a free loopback port."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The broker helper sits beside this file; make it importable whatever the import mode.
sys.path.insert(0, str(Path(__file__).parent))

from mosquitto import MOSQUITTO, Mosquitto, mosquitto_available


def require_mosquitto() -> None:
    """Skip (or fail on CI) when Mosquitto is not installed."""
    if mosquitto_available():
        return
    reason = f"{MOSQUITTO} not found: apt-get install -y mosquitto mosquitto-clients"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory: ``make_mosquitto(users={...}, tls=True)`` gives a started broker."""
    require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(make_mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    """A started anonymous Mosquitto with persistence."""
    return make_mosquitto()
