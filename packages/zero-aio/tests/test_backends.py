"""backends(): what was built, what is usable, and why not; choosing a backend."""

from __future__ import annotations

import pytest

import zero_aio


def test_threads_is_always_built_and_every_entry_has_a_reason():
    found = zero_aio.backends()
    assert set(found) == {"libaio", "io_uring", "threads", "gds"}
    assert found["threads"].built and found["threads"].usable
    for info in found.values():
        assert info.reason
        assert not info.usable or info.built


def test_missing_backends_say_how_to_get_them():
    found = zero_aio.backends()
    for name, package in (("libaio", "libaio-dev"), ("io_uring", "liburing-dev")):
        if not found[name].built and "left out" not in found[name].reason:
            assert package in found[name].reason
    assert not found["gds"].built


def test_default_backend_is_the_first_available():
    assert zero_aio.default_backend() == zero_aio.available_backends()[0]
    assert zero_aio.aio_handle().backend == zero_aio.default_backend()


@pytest.mark.parametrize("name", ["gds", "posix", ""])
def test_unusable_or_unknown_backend_is_refused(name):
    with pytest.raises(ValueError, match="backend"):
        zero_aio.aio_handle(backend=name)


def test_getters_report_deepspeed_defaults():
    h = zero_aio.aio_handle()
    assert h.get_block_size() == 1048576
    assert h.get_queue_depth() == 128
    assert h.get_single_submit() is False
    assert h.get_overlap_events() is False
    assert h.get_intra_op_parallelism() == 1
    h = zero_aio.aio_handle(4096, 8, True, True, 3, backend="threads")
    assert (h.get_block_size(), h.get_queue_depth(), h.get_intra_op_parallelism()) == (4096, 8, 3)
    assert h.get_single_submit() and h.get_overlap_events()


@pytest.mark.parametrize(
    "kwargs",
    [{"block_size": 0}, {"queue_depth": 0}, {"intra_op_parallelism": 0}, {"block_size": 2**31}],
)
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        zero_aio.aio_handle(**kwargs)


def test_gds_handle_says_why_it_is_missing_and_what_to_do():
    with pytest.raises(NotImplementedError, match="cuFile") as info:
        zero_aio.gds_handle()
    assert zero_aio.backends()["gds"].reason in str(info.value)
    assert "aio_handle" in str(info.value)


def test_report_lists_every_backend_with_its_state():
    section = zero_aio.report()
    assert section["version"] == zero_aio.__version__
    for name, info in zero_aio.backends().items():
        assert section[f"backend {name}"].endswith(info.reason)
        assert section[f"backend {name}"].startswith(
            "usable" if info.usable else ("built" if info.built else "missing")
        )
    assert section["default backend"] == zero_aio.default_backend()
    assert section["crc32c"] in ("sse4.2", "software")
