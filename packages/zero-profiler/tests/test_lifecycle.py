"""Bad input and the profiler's life cycle: the model must come out exactly as it went in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import MLP, assert_same_fingerprint, global_hook_counts, model_fingerprint
from zero_profiler import FlopsProfiler, ProfilerState, get_model_profile

MLP_FLOPS = 2 * 5 * 8 * 16 + 5 * 16 + 5 * 16 + 2 * 5 * 16 * 4 + 5 * 4 + 5 * 4  # batch 5


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc(x)
        raise RuntimeError("boom in forward")


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_forward_that_raises_propagates_and_cleans_up(mode: str) -> None:
    model = Boom()
    before = model_fingerprint(model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        get_model_profile(model, input_shape=(2, 4), mode=mode, warm_up=0)
    assert_same_fingerprint(before, model_fingerprint(model))
    assert torch._C._len_torch_dispatch_stack() == 0
    assert not FlopsProfiler._profiling
    # and profiling works normally afterwards
    mlp = MLP()
    flops, _, _ = get_model_profile(mlp, input_shape=(5, 8), print_profile=False, as_string=False)
    assert flops == MLP_FLOPS


def test_profiler_in_a_loop_survives_a_raising_forward() -> None:
    model = Boom()
    prof = FlopsProfiler(model)
    prof.start_profile()
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 4))
    # the always-called post hook unwound the module stack
    assert prof._session.chain == () and prof._session.stack == []
    prof.end_profile()
    assert global_hook_counts() == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_model_is_exactly_as_before_after_profiling(mlp: MLP, mode: str) -> None:
    mlp(torch.randn(5, 8)).sum().backward()  # give it .grad, which train mode must restore
    before = model_fingerprint(mlp)
    get_model_profile(mlp, input_shape=(5, 8), mode=mode, print_profile=False, warm_up=2)
    assert_same_fingerprint(before, model_fingerprint(mlp))


def test_model_is_exactly_as_before_after_end_profile(mlp: MLP) -> None:
    before = model_fingerprint(mlp)
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    mlp(torch.randn(5, 8))
    prof.stop_profile()
    prof.print_model_profile(output_file="/dev/null")
    prof.end_profile()
    assert_same_fingerprint(before, model_fingerprint(mlp))
    assert prof.state is ProfilerState.IDLE


def test_input_shape_and_args_both_given(mlp: MLP) -> None:
    with pytest.raises(ValueError, match="either input_shape or args"):
        get_model_profile(mlp, input_shape=(5, 8), args=(torch.randn(5, 8),))
    with pytest.raises(ValueError, match="either input_shape or args"):
        get_model_profile(mlp, input_shape=(5, 8), kwargs={"x": torch.randn(5, 8)})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "give input_shape, or args"),
        ({"input_shape": (5, 8), "mode": "backward"}, "mode must be one of"),
        ({"input_shape": (5, 0)}, "positive ints"),
        ({"input_shape": (5, 8), "warm_up": -1}, "warm_up"),
    ],
    ids=["no-input", "bad-mode", "zero-dim", "negative-warm-up"],
)
def test_bad_arguments(mlp: MLP, kwargs: dict, match: str) -> None:
    before = model_fingerprint(mlp)
    with pytest.raises(ValueError, match=match):
        get_model_profile(mlp, **kwargs)
    assert_same_fingerprint(before, model_fingerprint(mlp))


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        FlopsProfiler(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        get_model_profile(lambda x: x, input_shape=(1,))  # type: ignore[arg-type]


def test_start_twice_and_stop_without_start(mlp: MLP) -> None:
    prof = FlopsProfiler(mlp)
    with pytest.raises(RuntimeError, match="without a running start_profile"):
        prof.stop_profile()
    with pytest.raises(RuntimeError, match="nothing profiled"):
        prof.get_total_flops()
    prof.start_profile()
    with pytest.raises(RuntimeError, match="called twice"):
        prof.start_profile()
    other = FlopsProfiler(mlp)
    with pytest.raises(RuntimeError, match="already profiling this model"):
        other.start_profile()
    prof.stop_profile()
    with pytest.raises(RuntimeError, match="without a running start_profile"):
        prof.stop_profile()
    prof.end_profile()
    prof.end_profile()  # idempotent
    assert global_hook_counts() == (0, 0, 0, 0, 0)
    assert torch._C._len_torch_dispatch_stack() == 0


def test_profiler_can_be_used_again(mlp: MLP) -> None:
    prof = FlopsProfiler(mlp)
    totals = []
    for _ in range(2):
        prof.start_profile()
        mlp(torch.randn(5, 8))
        prof.stop_profile()
        totals.append(prof.get_total_flops())
        prof.end_profile()
    assert totals == [MLP_FLOPS, MLP_FLOPS]


def test_two_models_profiled_at_once_count_independently(mlp: MLP) -> None:
    other = MLP()
    p1, p2 = FlopsProfiler(mlp), FlopsProfiler(other)
    p1.start_profile()
    p2.start_profile()
    mlp(torch.randn(5, 8))
    other(torch.randn(5, 8))
    p2.stop_profile()
    p1.stop_profile()
    assert p1.get_total_flops() == p2.get_total_flops() == MLP_FLOPS


def test_modules_added_during_profiling(mlp: MLP) -> None:
    class Growing(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            x = self.base(x)
            extra = getattr(self, "extra", None)
            return extra(x) if extra is not None else x

    model = Growing()
    prof = FlopsProfiler(model)
    prof.start_profile()
    model.extra = nn.Linear(8, 3, bias=False)  # attached while profiling
    before = model_fingerprint(model)[2:]  # the modules only: global hooks are live now
    model(torch.randn(2, 8))
    prof.stop_profile()
    assert prof.get_total_macs() == 2 * 8 * 8 + 2 * 8 * 3
    text = prof.print_model_profile(output_file="/dev/null")
    assert "(extra): Linear(24, " in text
    prof.end_profile()
    assert_same_fingerprint(before, model_fingerprint(model)[2:])
    assert global_hook_counts() == (0, 0, 0, 0, 0)


def test_module_created_inside_forward_is_shown_under_its_caller() -> None:
    class Makes(nn.Module):
        def forward(self, x):
            return nn.Linear(4, 2, bias=False)(x)  # not a submodule

    model = Makes()
    prof = FlopsProfiler(model)
    prof.start_profile()
    model(torch.randn(3, 4))
    prof.stop_profile()
    assert prof.get_total_macs() == 3 * 4 * 2
    assert "(<Linear #0>): Linear(" in prof.print_model_profile(output_file="/dev/null")


def test_modules_outside_the_model_are_not_counted(mlp: MLP) -> None:
    loss_fn = nn.MSELoss()
    prof = FlopsProfiler(mlp)
    prof.start_profile()
    out = mlp(torch.randn(5, 8))
    loss_fn(out, torch.zeros_like(out))
    prof.stop_profile()
    assert prof.get_total_flops() == MLP_FLOPS
    assert prof._session.outside_fwd_flops == 3 * out.numel()


def test_meta_device_model_counts_like_the_real_one() -> None:
    torch.manual_seed(0)
    real = MLP()
    with torch.device("meta"):
        meta = MLP()
    assert next(meta.parameters()).is_meta
    before = model_fingerprint(real)
    counts = [
        get_model_profile(m, input_shape=(5, 8), print_profile=False, as_string=False)
        for m in (real, meta)
    ]
    assert counts[0] == counts[1] == (MLP_FLOPS, 5 * 8 * 16 + 5 * 16 * 4, 8 * 16 + 16 + 68)
    meta_train = get_model_profile(
        meta, input_shape=(5, 8), print_profile=False, as_string=False, mode="train"
    )
    assert meta_train == counts[0]
    assert_same_fingerprint(before, model_fingerprint(real))


def test_as_string_and_output_file(mlp: MLP, tmp_path) -> None:
    path = tmp_path / "profile.txt"
    flops, macs, params = get_model_profile(mlp, input_shape=(5, 8), output_file=str(path))
    assert (flops, macs, params) == ("2.12 K", "960 MACs", "212")  # 2120 flops, 960 MACs
    text = path.read_text()
    assert "Aggregated profile" in text and "Detailed profile" in text
