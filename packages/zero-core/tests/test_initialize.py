"""initialize() in one process (no launcher), the registry, the loop's order checks, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import zero_core
from training import adamw, config, global_batch, make_model, reference
from zero_core import _registry


def test_world_size_one_needs_no_launcher_and_matches_torch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    for stage in (0, 1, 2, 3):
        model = make_model()
        cfg = config(stage)
        cfg["train_micro_batch_size_per_gpu"] = 8  # the whole global batch of 2 x 4 rows
        engine, optimizer, loader, scheduler = zero_core.initialize(
            model=model, optimizer=adamw, config=cfg
        )
        assert not torch.distributed.is_initialized()
        assert loader is None and scheduler is None and optimizer is engine.optimizer
        losses = []
        for step in range(5):
            x, y = global_batch(step, 1)
            loss = nn.functional.mse_loss(engine(x), y)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        ref_losses, ref_weights = reference(5)
        assert losses == pytest.approx(ref_losses, rel=1e-6)
        for key, value in engine.full_state_dict().items():
            torch.testing.assert_close(value, ref_weights[key], rtol=1e-6, atol=1e-7)
        assert engine.train_batch_size() == 8 and engine.global_steps == 5


def test_config_from_a_json_file_builds_optimizer_and_scheduler(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_batch_size": 8,
                "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
                "scheduler": {"type": "StepLR", "params": {"step_size": 2, "gamma": 0.5}},
            }
        )
    )
    engine, optimizer, _, scheduler = zero_core.initialize(model=make_model(), config=str(path))
    assert isinstance(optimizer.inner, torch.optim.SGD)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    lrs = []
    for step in range(5):
        x, y = global_batch(step, 1)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
        lrs.append(engine.get_lr()[0])
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])


def test_user_optimizer_and_scheduler_objects_are_kept():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    engine, optimizer, _, scheduler = zero_core.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config={"train_batch_size": 8}
    )
    assert optimizer.inner is opt and scheduler is sched
    for step in range(3):
        x, y = global_batch(step, 1)
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 4)


def test_gradient_accumulation_steps_only_at_the_boundary():
    cfg = config(2, gas=3)
    cfg["train_micro_batch_size_per_gpu"] = 4
    engine, *_ = zero_core.initialize(model=make_model(), optimizer=adamw, config=cfg)
    assert engine.train_batch_size() == 12 and engine.gradient_accumulation_steps() == 3
    before = engine.full_state_dict()
    boundaries = []
    for micro in range(6):
        boundaries.append(engine.is_gradient_accumulation_boundary())
        x, y = global_batch(micro, 1)
        engine.backward(nn.functional.mse_loss(engine(x[:4]), y[:4]))
        engine.step()
        moved = any(not torch.equal(before[k], v) for k, v in engine.full_state_dict().items())
        assert moved == (micro >= 2)
    assert boundaries == [False, False, True, False, False, True]
    assert engine.global_steps == 2 and engine.global_samples == 24


def test_dataloader_uses_a_distributed_sampler_and_the_micro_batch():
    data = torch.utils.data.TensorDataset(torch.randn(20, 8), torch.randn(20, 1))
    _, _, loader, _ = zero_core.initialize(
        model=make_model(),
        optimizer=adamw,
        training_data=data,
        config={"train_micro_batch_size_per_gpu": 3, "dataloader_drop_last": True},
    )
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    assert loader.batch_size == 3 and len(loader) == 6
    assert sum(len(x) for x, _ in loader) == 18


# -- the registry -----------------------------------------------------------------------------


def test_torch_types_work_by_name_without_siblings(monkeypatch):
    monkeypatch.setattr(_registry, "entry_points", lambda group: [])
    opt = _registry.build_optimizer("adamw", [nn.Parameter(torch.ones(2))], {"lr": 0.5})
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 0.5
    sched = _registry.build_scheduler("StepLR", opt, {"step_size": 3})
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize(
    ("kind", "name", "package"),
    [("optimizer", "OneBitAdam", "zero-optim"), ("scheduler", "WarmupLR", "zero-sched")],
)
def test_deepspeed_types_name_the_package_to_install(monkeypatch, kind, name, package):
    monkeypatch.setattr(_registry, "entry_points", lambda group: [])
    with pytest.raises(ValueError, match=f"provided by {package}, which is not installed"):
        zero_core.initialize(
            model=make_model(),
            config={"train_batch_size": 8, kind: {"type": name, "params": {}}},
        )


def test_unknown_type_suggests_the_closest(monkeypatch):
    monkeypatch.setattr(_registry, "entry_points", lambda group: [])
    with pytest.raises(ValueError, match=r"did you mean 'AdamW'.*valid types: .*RMSprop"):
        _registry.build_optimizer("AdamWW", [nn.Parameter(torch.ones(2))], {})


def test_deepspeed_adam_options_work_on_torch_classes(monkeypatch):
    monkeypatch.setattr(_registry, "entry_points", lambda group: [])
    param = [nn.Parameter(torch.ones(2))]
    # DeepSpeed's "Adam" decouples weight decay unless adam_w_mode is false
    assert type(_registry.build_optimizer("Adam", param, {})) is torch.optim.AdamW
    plain = _registry.build_optimizer("Adam", param, {"adam_w_mode": False, "torch_adam": True})
    assert type(plain) is torch.optim.Adam
    opt = _registry.build_optimizer("AdamW", param, {"torch_adam": True, "lr": 0.2})
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == 0.2


def test_registered_entry_points_win(monkeypatch):
    made = {}

    class FakeEntryPoint:
        name = "AdamW"

        def load(self):
            def factory(params, **options):
                made["options"] = options
                return torch.optim.SGD(params, lr=options["lr"])

            return factory

    monkeypatch.setattr(_registry, "entry_points", lambda group: [FakeEntryPoint()])
    opt = _registry.build_optimizer("adamw", [nn.Parameter(torch.ones(2))], {"lr": 0.3})
    assert isinstance(opt, torch.optim.SGD) and made["options"] == {"lr": 0.3}


# -- order of calls and bad input -------------------------------------------------------------


def small_engine(**cfg):
    engine, *_ = zero_core.initialize(
        model=make_model(), optimizer=adamw, config={"train_batch_size": 8, **cfg}
    )
    return engine


def one_loss(engine):
    x, y = global_batch(0, 1)
    return nn.functional.mse_loss(engine(x), y)


def test_step_without_backward_is_an_error():
    engine = small_engine()
    with pytest.raises(RuntimeError, match="step\\(\\) called without backward\\(\\)"):
        engine.step()


def test_backward_twice_is_an_error():
    engine = small_engine()
    engine.backward(one_loss(engine))
    with pytest.raises(RuntimeError, match="backward\\(\\) called twice without step\\(\\)"):
        engine.backward(one_loss(engine))
    engine.step()  # the first backward's step still works
    assert engine.global_steps == 1


def test_non_finite_loss_stops_fp32_training():
    engine = small_engine()
    before = engine.full_state_dict()
    with pytest.raises(FloatingPointError, match="non-finite loss \\(nan"):
        engine.backward(one_loss(engine) * float("nan"))
    assert all(torch.equal(before[k], v) for k, v in engine.full_state_dict().items())


def test_model_without_trainable_params():
    model = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        zero_core.initialize(model=model, optimizer=adamw, config={"train_batch_size": 8})


def test_optimizer_missing_a_trainable_param():
    model = make_model()
    opt = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    with pytest.raises(ValueError, match="require grad but are in no optimizer param group"):
        zero_core.initialize(model=model, optimizer=opt, config={"train_batch_size": 8})


def test_optimizer_that_already_stepped():
    model = make_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="already stepped"):  # its state cannot be partitioned
        zero_core.initialize(
            model=model,
            optimizer=opt,
            config={"train_batch_size": 8, "zero_optimization": {"stage": 1}},
        )


def test_optimizer_twice():
    model = make_model()
    with pytest.raises(ValueError, match="give one or the other"):
        zero_core.initialize(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            config={"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 1}}},
        )


def test_missing_model_and_bad_config():
    with pytest.raises(ValueError, match="needs the model"):
        zero_core.initialize(config={"train_batch_size": 8})
    with pytest.raises(zero_core.ConfigError, match=r"zero_optimization\.stgae"):
        zero_core.initialize(model=make_model(), config={"zero_optimization": {"stgae": 1}})


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"zero_optimization": {"stage3_module_granularity_threshold": 5}}, "granularity"),
        ({"data_types": {"grad_accum_dtype": "bf16"}}, "grad_accum_dtype"),
    ],
)
def test_settings_the_engine_would_ignore_are_refused(extra, match):
    with pytest.raises(NotImplementedError, match=match):
        zero_core.initialize(
            model=make_model(), optimizer=adamw, config={"train_batch_size": 8, **extra}
        )


def test_ignore_unused_parameters_false_raises_on_an_unused_param():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 1)
            self.b = nn.Linear(8, 1)

        def forward(self, x):
            return self.a(x)

    engine, *_ = zero_core.initialize(
        model=TwoHeads(),
        optimizer=adamw,
        config={"train_batch_size": 8, "zero_optimization": {"ignore_unused_parameters": False}},
    )
    x, y = global_batch(0, 1)
    engine.backward(nn.functional.mse_loss(engine(x), y))
    with pytest.raises(RuntimeError, match=r"'b\.weight', 'b\.bias'.*ignore_unused_parameters"):
        engine.step()


def test_loss_scaler_dynamic_rule_by_hand():
    s = zero_core.LossScaler(initial_scale_power=4, loss_scale_window=3, hysteresis=2)
    seen = []
    for overflow in [False, False, False, True, True, False, False, False, True, False]:
        s.update(overflow)
        seen.append(s.cur_scale)
    # 3 clean steps double 16 -> 32; the 1st overflow uses up hysteresis, the 2nd halves;
    # 3 clean steps after the last overflow double again (hysteresis refilled to 2); one
    # overflow then only costs hysteresis.
    assert seen == [16, 16, 32, 32, 16, 16, 16, 32, 32, 32]
    static = zero_core.LossScaler(loss_scale=128)
    static.update(True)
    assert static.cur_scale == 128
    consecutive = zero_core.LossScaler(
        initial_scale_power=4, loss_scale_window=100, hysteresis=2, consecutive_hysteresis=True
    )
    for overflow in [True, False, True, False, True, True]:
        consecutive.update(overflow)
    assert consecutive.cur_scale == 8  # only the two overflows in a row halved it
    floor = zero_core.LossScaler(initial_scale_power=1, hysteresis=1, min_loss_scale=1)
    for _ in range(3):
        floor.update(True)
    assert floor.cur_scale == 1
