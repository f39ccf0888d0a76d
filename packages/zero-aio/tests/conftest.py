"""Shared fixtures: run every I/O test on every backend built and usable here."""

from __future__ import annotations

import pytest

import zero_aio

AVAILABLE = zero_aio.available_backends()


@pytest.fixture(params=AVAILABLE)
def backend(request) -> str:
    return request.param
