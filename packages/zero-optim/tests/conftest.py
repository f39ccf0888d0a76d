"""Shared fixtures: run kernel tests under every instruction set this CPU supports."""

from __future__ import annotations

import pytest

from zero_optim._native import cpu_features, select_isa

SUPPORTED_ISAS = cpu_features()["supported"]


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Select each usable kernel set in turn, restoring the original afterwards."""
    original = cpu_features()["isa"]
    select_isa(request.param)
    yield request.param
    select_isa(original)
