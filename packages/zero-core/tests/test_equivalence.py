"""Every ZeRO stage on 2 gloo ranks trains exactly like one process on the global batch.

fp32 must agree to ~1e-6 relative (only the order of the gradient sums differs). bf16 is
compared with a single-process bf16 run of the same scheme (bf16 compute, fp32 masters);
the ranks compute on half-size batches, so bf16 rounding differs: a looser tolerance.
"""

from __future__ import annotations

import pytest
import torch

from harness import run_ranks
from training import config, reference, train_ranks

STEPS = 20

CASES = {
    f"stage{stage}-{dtype}-{variant}": (stage, dtype, variant)
    for stage in (0, 1, 2, 3)
    for dtype in ("fp32", "bf16")
    for variant in ("plain", "gas2-clip")
} | {
    "stage2-fp32-overlap": (2, "fp32", "overlap"),
    "stage3-fp32-overlap": (3, "fp32", "overlap"),
    "stage1-fp32-prescale": (1, "fp32", "prescale"),
}


def _options(variant: str) -> dict:
    if variant == "gas2-clip":
        return {"gas": 2, "clip": 0.05}
    return {}


def _config(stage: int, dtype: str, variant: str) -> dict:
    opts = _options(variant)
    zero = {"overlap_comm": variant == "overlap"}
    cfg = config(stage, dtype=dtype, **opts, **zero)
    if variant == "prescale":
        cfg["prescale_gradients"] = True
        cfg["gradient_predivide_factor"] = 2.0
    return cfg


def _all_cases(rank: int) -> dict:
    return {name: train_ranks(rank, _config(*case), STEPS) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def results() -> dict:
    per_rank = run_ranks(_all_cases, timeout=600)
    for name in CASES:  # every rank ends with the same full weights
        for key, value in per_rank[0][name]["weights"].items():
            assert torch.equal(value, per_rank[1][name]["weights"][key]), (name, key)
    return per_rank[0]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_single_process(results, name):
    _, dtype, variant = CASES[name]
    opts = _options(variant)
    ref_losses, ref_weights = reference(STEPS, dtype=dtype, **opts)
    got = results[name]
    tol = 2e-6 if dtype == "fp32" else 3e-2
    losses = torch.tensor(got["losses"])
    assert torch.allclose(losses, torch.tensor(ref_losses), rtol=tol, atol=tol * 1e-2)
    for key, ref in ref_weights.items():
        scale = ref.abs().max()
        err = (got["weights"][key] - ref).abs().max() / scale
        assert err < tol * 5, (key, float(err))
    assert got["global_steps"] == STEPS and got["skipped_steps"] == 0
    assert got["global_samples"] == STEPS * 4 * 2 * opts.get("gas", 1)


def test_training_moves_the_weights(results):
    # guards against a comparison that passes because nothing trained
    _, before = reference(0)
    after = results["stage3-fp32-plain"]["weights"]
    assert all(not torch.equal(before[k], after[k]) for k in before)
