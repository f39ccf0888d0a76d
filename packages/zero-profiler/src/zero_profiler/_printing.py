"""The profile report: the summary, the top modules per depth, and the per-module tree.

The layout follows DeepSpeed's so its users find things where they expect them; the words
and the extra lines (measured backward, MFU, operators not counted) are ours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from ._format import (
    duration_to_string,
    flops_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
)
from ._params import count_parameters
from ._session import ModuleStats, Session

__all__ = ["ProfileSnapshot", "render_profile"]

_WIDTH = 90


@dataclass
class ProfileSnapshot:
    """The numbers one report is printed from."""

    session: Session
    params: int
    bwd_latency: float | None  # seconds, given by the caller
    step_latency: float | None
    batch_size: int | None
    peak_flops: float | None
    peak_source: str


@dataclass
class _Node:
    """A module in the printed tree: its path name, the module and its counts.

    A module that was never called itself (a ``ModuleList``, or a container the parent
    iterates over) shows the sum of its children, so the tree still adds up.
    """

    name: str
    module: nn.Module
    depth: int
    children: list[_Node]
    params: int
    ran: bool  # the module itself (or, for a container, one of its children) was called
    fwd_flops: int
    fwd_macs: int
    bwd_flops: int
    fwd_latency: float


def _banner(title: str) -> str:
    return f" {title} ".center(_WIDTH, "-")


def _rate(flops: float, seconds: float | None) -> str:
    if not seconds:
        return "n/a"
    return flops_to_string(flops / seconds)


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "0.00%"


def _build_tree(session: Session) -> _Node:
    """The model's module tree as it is now, plus modules that ran inside it without being
    submodules (created in ``forward``), under the module that called them."""
    model = session.model
    extra_children: dict[int, list[nn.Module]] = defaultdict(list)
    in_tree = {id(m) for m in model.modules()}
    for key, stats in session.stats.items():
        if key not in in_tree and stats.parent is not None:
            extra_children[id(stats.parent.module)].append(stats.module)

    def build(name: str, module: nn.Module, depth: int, extra: bool) -> _Node:
        children = [
            build(f"{name}.{child_name}" if name else child_name, child, depth + 1, False)
            for child_name, child in module.named_children()
        ]
        for i, child in enumerate(extra_children.get(id(module), ())):
            label = f"<{type(child).__name__} #{i}>"
            children.append(build(f"{name}.{label}" if name else label, child, depth + 1, True))
        params = count_parameters(module)
        stats = session.stats.get(id(module))
        if stats is not None and (stats.calls or stats.fwd_flops or stats.bwd_flops):
            own = (stats.fwd_flops, stats.fwd_macs, stats.bwd_flops, stats.fwd_latency)
            return _Node(name, module, depth, children, params, True, *own)
        ran = [c for c in children if c.ran]
        return _Node(
            name,
            module,
            depth,
            children,
            params,
            bool(ran),
            sum(c.fwd_flops for c in ran),
            sum(c.fwd_macs for c in ran),
            sum(c.bwd_flops for c in ran),
            sum(c.fwd_latency for c in ran),
        )

    return build("", model, 0, False)


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _summary(snap: ProfileSnapshot, step: int) -> list[str]:
    root = snap.session.root()
    fwd, bwd, stp = root.fwd_latency, snap.bwd_latency, snap.step_latency
    ran_backward = root.bwd_flops > 0 or bwd is not None
    iter_latency = fwd + (bwd or 0.0) + (stp or 0.0)
    lines = [
        _banner("zero_profiler flops profile"),
        f"Profile summary at step {step}:",
        "Notations: params = parameters, MACs = multiply-accumulates, flops = floating-point",
        "operations (1 MAC = 2 flops), FLOPS = flops per second, fwd/bwd = forward/backward",
        "pass, step = optimizer step, iter = fwd + bwd + step. Counts are exact, per ATen",
        "operator; backward flops are measured, not estimated as 2 x forward.",
        "",
    ]
    rows: list[tuple[str, str]] = [
        ("params", params_to_string(snap.params)),
        ("fwd MACs", macs_to_string(root.fwd_macs)),
        ("fwd flops", number_to_string(root.fwd_flops)),
    ]
    if ran_backward:
        ratio = f"{root.bwd_flops / root.fwd_flops:.3f}" if root.fwd_flops else "n/a"
        rows += [
            ("bwd MACs (measured)", macs_to_string(root.bwd_macs)),
            ("bwd flops (measured)", number_to_string(root.bwd_flops)),
            ("bwd / fwd flops", ratio),
        ]
    rows += [
        ("fwd latency", duration_to_string(fwd)),
        ("fwd FLOPS = fwd flops / fwd latency", _rate(root.fwd_flops, fwd)),
    ]
    if bwd is not None:
        rows += [
            ("bwd latency", duration_to_string(bwd)),
            ("bwd FLOPS = bwd flops / bwd latency", _rate(root.bwd_flops, bwd)),
            ("fwd+bwd FLOPS", _rate(root.fwd_flops + root.bwd_flops, fwd + bwd)),
        ]
    else:
        rows.append(("bwd latency", "not measured"))
    rows.append(("step latency", duration_to_string(stp) if stp is not None else "not measured"))
    rows.append(("iter latency", duration_to_string(iter_latency)))
    if snap.batch_size and iter_latency > 0:
        rows.append(("samples/second", f"{snap.batch_size / iter_latency:.2f}"))
    else:
        rows.append(("samples/second", "n/a (batch size unknown)"))
    if snap.peak_flops:
        work = root.fwd_flops + (root.bwd_flops if bwd is not None else 0)
        seconds = fwd + (bwd if bwd is not None else 0.0)
        mfu = f"{100 * work / seconds / snap.peak_flops:.2f}%" if seconds else "n/a"
        rows.append(("peak FLOPS", f"{flops_to_string(snap.peak_flops)} ({snap.peak_source})"))
        rows.append(("MFU = achieved FLOPS / peak FLOPS", mfu))
    else:
        rows.append(("MFU", f"n/a (peak FLOPS {snap.peak_source})"))
    session = snap.session
    if session.outside_fwd_flops or session.outside_bwd_flops:
        rows.append(
            (
                "flops outside the model (not in totals)",
                f"fwd {number_to_string(session.outside_fwd_flops)}, "
                f"bwd {number_to_string(session.outside_bwd_flops)}",
            )
        )
    width = max(len(label) for label, _ in rows) + 2
    lines += [f"{label + ':':<{width}}{value}" for label, value in rows]
    if session.unknown:
        lines.append("operators not counted (scored 0 flops; no rule for them):")
        for name, calls in sorted(session.unknown.items()):
            where = ", ".join(sorted(session.unknown_where.get(name, ())))
            lines.append(f"    {name}: {calls} call{'s' * (calls != 1)} (in {where})")
    else:
        lines.append("operators not counted: none")
    return lines


def _aggregated(tree: _Node, depth_limit: int, top: int) -> list[str]:
    by_depth: dict[int, dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0, 0.0, 0.0])
    )
    for node in _walk(tree):
        if depth_limit >= 0 and node.depth > depth_limit:
            continue
        totals = by_depth[node.depth][type(node.module).__name__]
        totals[0] += node.params
        totals[1] += node.fwd_macs
        totals[2] += node.fwd_latency
    lines = [
        _banner("Aggregated profile"),
        f"Top {top} modules in terms of params, MACs or fwd latency at each model depth",
        "(modules of the same class at one depth are summed):",
    ]
    formats = (
        ("params", params_to_string),
        ("MACs", macs_to_string),
        ("fwd latency", duration_to_string),
    )
    for depth in sorted(by_depth):
        classes = by_depth[depth]
        lines.append(f"depth {depth}:")
        for i, (label, fmt) in enumerate(formats):
            ranked = sorted(classes.items(), key=lambda item: item[1][i], reverse=True)[:top]
            shown = ", ".join(f"'{cls}': '{fmt(values[i])}'" for cls, values in ranked)
            lines.append(f"    {label:<11} - {{{shown}}}")
    return lines


def _module_line(node: _Node, root: ModuleStats, root_params: int, with_bwd: bool) -> str:
    params = f"{params_to_string(node.params)}, {_pct(node.params, root_params)} Params"
    if not node.ran:
        return f"{params}, not run while profiling"
    parts = [
        params,
        f"{macs_to_string(node.fwd_macs)}, {_pct(node.fwd_macs, root.fwd_macs)} MACs",
        f"{duration_to_string(node.fwd_latency)}, "
        f"{_pct(node.fwd_latency, root.fwd_latency)} latency",
        _rate(node.fwd_flops, node.fwd_latency),
    ]
    if with_bwd:
        parts.append(
            f"{number_to_string(node.bwd_flops)} bwd flops, "
            f"{_pct(node.bwd_flops, root.bwd_flops)} bwd flops"
        )
    return ", ".join(parts)


def _detailed(tree: _Node, root: ModuleStats, depth_limit: int, with_bwd: bool) -> list[str]:
    order = "params, % of total params, MACs, % of total MACs, fwd latency, % of total fwd"
    order += " latency, fwd FLOPS" + (", bwd flops, % of total bwd flops" if with_bwd else "")
    lines = [
        _banner("Detailed profile"),
        f"Each module is followed by: {order}.",
        "A module's numbers include everything that ran inside its forward: its submodules",
        "and the functionals and tensor methods it calls itself, which is why a parent can",
        "count more than the sum of its children. Modules marked <...> ran inside the model",
        "without being submodules of it.",
        "",
    ]

    def emit(node: _Node, indent: str) -> None:
        label = f"({node.name.rsplit('.', 1)[-1]}): " if node.name else ""
        extra = node.module.extra_repr()
        stats = _module_line(node, root, tree.params, with_bwd)
        head = f"{indent}{label}{type(node.module).__name__}({stats}"
        expand = node.children and (depth_limit < 0 or node.depth < depth_limit)
        if not expand:
            suffix = ", ..." if node.children else ""
            lines.append(f"{head}{', ' + extra if extra else ''}{suffix})")
            return
        lines.append(f"{head}{', ' + extra if extra else ''}")
        for child in node.children:
            emit(child, indent + "  ")
        lines.append(f"{indent})")

    emit(tree, "")
    return lines


def render_profile(
    snap: ProfileSnapshot, *, profile_step: int, module_depth: int, top_modules: int, detailed: bool
) -> str:
    """The report's text (see :meth:`zero_profiler.FlopsProfiler.print_model_profile`)."""
    tree = _build_tree(snap.session)
    root = snap.session.root()
    with_bwd = root.bwd_flops > 0
    lines = _summary(snap, profile_step)
    lines += _aggregated(tree, module_depth, top_modules)
    if detailed:
        lines += _detailed(tree, root, module_depth, with_bwd)
    lines.append("-" * _WIDTH)
    return "\n".join(lines)
