"""The zero-moe section of ``zerospeed report``."""

from __future__ import annotations

__all__ = ["report"]


def report() -> dict[str, str]:
    """What this install of zero-moe provides, as label -> value pairs: the gating options a
    config may name and the ``"sparse_attention"`` modes it understands, so a user can check
    a config against the installed version before launching."""
    from . import __all__ as public
    from . import __version__
    from ._gating import NOISY_GATE_POLICIES
    from ._sparse_config import SPARSE_ATTENTION_MODES

    policies = [p for p in NOISY_GATE_POLICIES if p not in (None, "None")]
    layouts = [n for n in public if n.endswith("SparsityConfig") and n != "SparsityConfig"]
    return {
        "version": __version__,
        "gating": f"top-k, any k >= 1; noisy gate policies: {', '.join(policies)}",
        "sparse_attention modes": ", ".join(SPARSE_ATTENTION_MODES),
        "sparsity layouts": ", ".join(layouts),
    }
