"""Slow, obviously-correct MoE references the tests compare the vectorized layer against.

Gating follows the documented rules with Python loops over experts and tokens; the layer
output runs each expert module on the tokens it kept, one expert at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def reference_route(logits: Tensor, k: int, capacity: int) -> tuple[list, list]:
    """Deterministic routing (no noise, no random token selection).

    Returns ``(kept, weights)``: ``kept[e]`` the tokens expert ``e`` processes and
    ``weights[s]`` a dict ``{expert: combine weight}`` for token ``s``.
    """
    s_count, e_count = logits.shape
    gates = logits.softmax(dim=1)
    probs = gates.detach()
    order = probs.argsort(dim=1, descending=True, stable=True)
    choices = [[int(order[s, j]) for j in range(k)] for s in range(s_count)]
    kept: list[list[int]] = [[] for _ in range(e_count)]
    if k == 1 or k == 2:
        # first choices in token order, then second choices in token order
        for j in range(k):
            for s in range(s_count):
                e = choices[s][j]
                if len(kept[e]) < capacity:
                    kept[e].append(s)
    else:
        for e in range(e_count):
            wanting = [s for s in range(s_count) if e in choices[s]]
            wanting.sort(key=lambda s: (-probs[s, e].item(), s))
            kept[e] = wanting[:capacity]
    weights: list[dict[int, Tensor]] = [{} for _ in range(s_count)]
    for e in range(e_count):
        for s in kept[e]:
            weights[s][e] = gates[s, e]
    if k > 1:
        for s in range(s_count):
            total = sum(weights[s].values()) if weights[s] else None
            weights[s] = {e: w / total for e, w in weights[s].items()}
    return kept, weights


def reference_forward(
    tokens: Tensor, experts: list[nn.Module], kept: list, weights: list
) -> Tensor:
    """Loop over experts: each runs on its kept tokens; outputs summed with weights."""
    out = torch.zeros_like(tokens)
    for e, expert in enumerate(experts):
        if not kept[e]:
            continue
        idx = torch.tensor(kept[e])
        y = expert(tokens[idx])
        for row, s in enumerate(kept[e]):
            out[s] = out[s] + weights[s][e] * y[row]
    return out


def reference_l_aux(logits: Tensor, k: int) -> Tensor:
    """E * sum_e mean_prob(e) * share(e), share from first choices (k <= 2) or all k / k."""
    s_count, e_count = logits.shape
    gates = logits.softmax(dim=1)
    total = torch.zeros(())
    top = gates.topk(k, dim=1).indices
    for e in range(e_count):
        me = gates[:, e].mean()
        if k <= 2:
            ce = sum(1 for s in range(s_count) if top[s, 0] == e) / s_count
            total = total + me * ce * e_count
        else:
            ce = sum(1 for s in range(s_count) if e in top[s].tolist()) / s_count
            total = total + me * ce * e_count / k
    return total
