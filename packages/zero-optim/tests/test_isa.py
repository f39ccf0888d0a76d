"""Runtime kernel dispatch: every instruction set gives bit-identical results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zero_optim
from zero_optim._native import cpu_features, select_isa


def test_cpu_features_report():
    features = zero_optim.cpu_features()
    assert features["isa"] in features["supported"]
    assert set(features["supported"]) <= set(features["compiled"])
    assert "baseline" in features["supported"]
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        assert features["compiled"] == ["avx512", "avx2", "baseline"]
        cpu_flags = Path("/proc/cpuinfo").read_text()
        if " avx2 " in cpu_flags and " fma " in cpu_flags:
            assert "avx2" in features["supported"]
            assert features["isa"] in ("avx2", "avx512")


def run_step(isa_name, dtype, copy_dtype=None):
    original = cpu_features()["isa"]
    select_isa(isa_name)
    try:
        gen = torch.Generator().manual_seed(7)
        params = [
            torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype))
            for n in (1, 31, 4097, 100003)
        ]
        copies = [torch.zeros_like(p, dtype=copy_dtype) for p in params] if copy_dtype else None
        opt = zero_optim.CPUAdam(params, lr=1e-2, weight_decay=0.1, num_threads=2)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step(fp16_param_groups=[copies] if copies else None)
        out = [p.detach().clone() for p in params]
        out += [opt.state[p][k].clone() for p in params for k in ("exp_avg", "exp_avg_sq")]
        return out + (copies or [])
    finally:
        select_isa(original)


@pytest.mark.parametrize(
    ("dtype", "copy_dtype"),
    [
        (torch.float32, None),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, None),
        (torch.float16, None),
    ],
)
def test_every_isa_is_bit_identical_to_baseline(dtype, copy_dtype):
    baseline = run_step("baseline", dtype, copy_dtype)
    for name in cpu_features()["supported"]:
        for a, b in zip(run_step(name, dtype, copy_dtype), baseline):
            assert torch.equal(a, b), name


def test_select_unknown_isa_is_refused():
    with pytest.raises(ValueError, match="'sse9' is not built into this extension"):
        select_isa("sse9")
    unsupported = [n for n in cpu_features()["compiled"] if n not in cpu_features()["supported"]]
    for name in unsupported:
        with pytest.raises(ValueError, match=f"this CPU cannot run the '{name}' kernels"):
            select_isa(name)


def test_environment_variable_forces_a_kernel_set():
    code = "import zero_optim; print(zero_optim.cpu_features()['isa'])"
    env = dict(os.environ, ZERO_OPTIM_ISA="baseline")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "baseline"
    env["ZERO_OPTIM_ISA"] = "not-a-kernel-set"  # ignored: the best supported set is used
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == cpu_features()["supported"][0]
