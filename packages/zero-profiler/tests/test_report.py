"""The printed report, number formatting, the peak-FLOPS table and ``report()``."""

from __future__ import annotations

import re

import torch
from torch import nn

import zero_profiler
from conftest import MLP
from zero_profiler import (
    FlopsProfiler,
    duration_to_string,
    flops_to_string,
    get_model_profile,
    macs_to_string,
    number_to_string,
    params_to_string,
    peak_flops_for,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([MLP(), MLP()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(torch.cat([x, x], -1))
        return self.head(x)


def _report(**kwargs) -> str:
    model = Net()
    prof = FlopsProfiler(model, peak_flops=1e9)
    prof.start_profile()
    model(torch.randn(5, 4))
    prof.stop_profile()
    return prof.print_model_profile(output_file="/dev/null", **kwargs)


def test_three_parts_in_order() -> None:
    text = _report()
    parts = [
        "flops profile",
        "Profile summary at step 1:",
        "Aggregated profile",
        "Detailed profile",
    ]
    positions = [text.index(p) for p in parts]
    assert positions == sorted(positions)
    for label in ("params:", "fwd MACs:", "fwd flops:", "fwd latency:", "samples/second:"):
        assert label in text
    assert "operators not counted: none" in text


def test_summary_values() -> None:
    text = _report()
    mlp_macs = 5 * 8 * 16 + 5 * 16 * 4
    assert re.search(rf"fwd MACs:\s+{re.escape(macs_to_string(2 * mlp_macs + 5 * 4 * 2))}", text)
    assert "peak FLOPS:" in text and "1 GFLOPS (given)" in text
    assert re.search(r"MFU = achieved FLOPS / peak FLOPS:\s+\d+\.\d\d%", text)
    assert re.search(r"samples/second:\s+\d", text)  # batch size read from the input


def test_aggregated_top_modules_per_depth() -> None:
    text = _report(top_modules=2)
    agg = text.split("Aggregated profile")[1].split("Detailed profile")[0]
    assert "depth 0:" in agg and "depth 3:" in agg
    depth1 = agg.split("depth 1:")[1].split("depth 2:")[0]
    # the ModuleList (never called itself) shows the sum of its two MLPs
    assert re.search(r"MACs\s+- \{'ModuleList': '1.92 KMACs', 'Linear': '40 MACs'\}", depth1)
    assert "depth 2:" in _report(module_depth=2) and "depth 3:" not in _report(module_depth=2)


def test_detailed_tree() -> None:
    text = _report()
    detailed = text.split("Detailed profile")[1]
    assert "(layers): ModuleList(" in detailed
    assert re.search(r"\(fc1\): Linear\(144, [\d.]+% Params, 640 MACs, ", detailed)
    assert "in_features=8, out_features=16" in detailed
    shallow = _report(module_depth=1).split("Detailed profile")[1]
    assert "(fc1)" not in shallow and "(0): MLP(" not in shallow
    assert "(layers): ModuleList(" in shallow and ", ...)" in shallow
    assert "Detailed profile" not in _report(detailed=False)


def test_report_mentions_not_run_modules() -> None:
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    model = Skips()
    prof = FlopsProfiler(model)
    prof.start_profile()
    model(torch.randn(1, 2))
    prof.stop_profile()
    assert "(unused): Linear(6, 50.00% Params, not run while profiling" in (
        prof.print_model_profile(output_file="/dev/null")
    )


def test_number_formatting() -> None:
    assert number_to_string(26_850_000_000) == "26.85 G"
    assert number_to_string(999) == "999"
    assert macs_to_string(3.14e12) == "3.14 TMACs"
    assert flops_to_string(82.21e12) == "82.21 TFLOPS"
    assert params_to_string(336_230_000) == "336.23 M"
    assert duration_to_string(0.07667) == "76.67 ms"
    assert duration_to_string(34.09e-6) == "34.09 us"
    assert duration_to_string(2.5) == "2.5 s"


def test_peak_table() -> None:
    assert peak_flops_for("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert peak_flops_for("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert peak_flops_for("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4e12
    assert peak_flops_for("NVIDIA A10G", torch.float16) == 70e12
    assert peak_flops_for("Some CPU", torch.float32) is None


def test_mfu_unavailable_on_cpu_without_peak(capsys) -> None:
    get_model_profile(MLP(), input_shape=(5, 8), detailed=False)
    assert "MFU:" in capsys.readouterr().out


def test_report_section() -> None:
    section = zero_profiler.report()
    assert section["version"] == zero_profiler.__version__
    assert "ATen operators" in section["flops rules"]
    assert "csv" in section["monitors"]


def test_public_names_resolve() -> None:
    for name in zero_profiler.__all__:
        assert hasattr(zero_profiler, name), name
