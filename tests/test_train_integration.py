"""The meta-package end to end: torchrun, 2 ranks, zerospeed.initialize with zero-optim's
AdamW and zero-sched's WarmupLR found through the registry, ZeRO stage 3 in bf16."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import zero_sched
from train_script import CONFIG, STEPS, batch, make_model


def torchrun_two_ranks(script: str, out: Path) -> None:
    """Run ``tests/<script> OUT`` on 2 local ranks through torchrun, as users launch."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name(script)), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]


def reference() -> tuple[list[float], list[float], dict]:
    """One process, the whole batch: bf16 compute, fp32 masters, torch AdamW, WarmupLR."""
    model = make_model()
    masters = [p.detach().clone().requires_grad_() for p in model.parameters()]
    model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(masters, **CONFIG["optimizer"]["params"])
    sched = zero_sched.WarmupLR(opt, **CONFIG["scheduler"]["params"])
    losses, lrs = [], []
    for step in range(STEPS):
        x, y = batch(step)
        loss = nn.functional.mse_loss(model(x.to(torch.bfloat16)).float(), y)
        model.zero_grad()
        loss.backward()
        for m, p in zip(masters, model.parameters()):
            m.grad = p.grad.float()
        opt.step()
        sched.step()
        with torch.no_grad():
            for m, p in zip(masters, model.parameters()):
                p.copy_(m)
        losses.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
    return losses, lrs, {k: v.float() for k, v in model.state_dict().items()}


def test_torchrun_two_ranks_stage3_bf16_with_registry_types(tmp_path):
    out = tmp_path / "result.pt"
    torchrun_two_ranks("train_script.py", out)
    got = torch.load(out)
    assert got["world"] == 2
    assert got["optimizer"] == "zero_optim._adam.CPUAdam"  # zero-optim's AdamW, via entry point
    assert got["scheduler"] == "zero_sched._warmup.WarmupLR"
    ref_losses, ref_lrs, ref_weights = reference()
    assert got["lrs"] == ref_lrs  # the schedule is exact
    assert torch.allclose(torch.tensor(got["losses"]), torch.tensor(ref_losses), rtol=3e-2)
    for key, ref in ref_weights.items():
        err = (got["weights"][key] - ref).abs().max() / ref.abs().max()
        assert err < 2e-2, (key, float(err))  # a few bf16 ulps
    start = {k: v.float() for k, v in make_model().state_dict().items()}
    assert all(not torch.equal(start[k], got["weights"][k]) for k in start)


def test_onebit_adam_through_the_engine(tmp_path):
    """OneBitAdam (zero-optim) communicates itself: the engine hands it local gradients,
    every rank ends with the same weights, and ZeRO stages it cannot do are refused."""
    out = tmp_path / "onebit"
    torchrun_two_ranks("onebit_script.py", out)
    r0, r1 = (torch.load(f"{out}.{r}") for r in (0, 1))
    assert r0["optimizer"] == "OnebitAdam"
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
    torch.manual_seed(0)  # the script's initial weights
    start = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    assert all(not torch.equal(v, r0["weights"][k]) for k, v in start.state_dict().items())
    assert "works with ZeRO stage 0 only; the config asks for stage 2" in r0["refused"]


def test_moe_expert_parallel_with_zero_stages_2_and_3(tmp_path):
    """zero-moe's experts (ep_size 2) through zero-core: dense grads averaged over the world,
    expert grads over each expert's group, at stages 2 and 3 (the reference does not do MoE
    at stage 3); equals one process running both experts on both ranks' tokens."""
    from moe_script import STEPS, MoENet, batch

    out = tmp_path / "moe"
    torchrun_two_ranks("moe_script.py", out)
    torch.manual_seed(0)
    ref = MoENet(ep_size=1)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(STEPS):
        loss = sum(
            nn.functional.mse_loss(ref(batch(step, r)[0]), batch(step, r)[1]) for r in (0, 1)
        )
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
    expected = ref.state_dict()
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        for stage in (2, 3):
            for name, value in got[stage].items():
                # this rank's local expert 0 is global expert `rank`
                ref_name = name.replace("deepspeed_experts.0.", f"deepspeed_experts.{rank}.")
                torch.testing.assert_close(
                    value, expected[ref_name], rtol=1e-5, atol=1e-6, msg=f"{stage} {name}"
                )
