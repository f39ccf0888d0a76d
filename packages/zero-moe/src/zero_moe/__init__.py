"""zero-moe: Mixture of Experts with expert parallelism, and block-sparse self-attention.

* :class:`MoE` is DeepSpeed's MoE layer: top-1/2/k gating with capacities, token dropping,
  random token selection, noisy gates and the load-balancing loss; tokens moved by index
  (no dense tokens x experts x capacity tensors), experts run as one grouped computation,
  expert parallelism over ``all_to_all``, and PR-MoE's residual expert.
* Expert parameters carry the attributes an engine reads to reduce their gradients over
  the expert-data-parallel group; :func:`split_params_into_different_moe_groups_for_optimizer`
  gives them their own optimizer groups.
* :class:`SparseSelfAttention` computes attention on the nonzero blocks of a layout built by
  one of the ``SparsityConfig`` classes (DeepSpeed's ``"sparse_attention"`` block).
"""

from ._attention import SparseSelfAttention
from ._experts import Experts
from ._gating import GateOutput, TopKGate, compute_capacity
from ._groups import (
    ExpertGroups,
    create_expert_and_data_parallel,
    expert_group_name,
    get_expert_data_parallel_group,
    get_expert_data_parallel_ranks,
    get_expert_parallel_group,
    get_expert_parallel_ranks,
)
from ._layer import MoE, MOELayer
from ._optim import is_moe_param, split_params_into_different_moe_groups_for_optimizer
from ._report import report
from ._sparse_config import sparsity_config_from_dict
from ._sparse_utils import BertSparseSelfAttention, SparseAttentionUtils
from ._sparsity import (
    BigBirdSparsityConfig,
    BSLongformerSparsityConfig,
    DenseSparsityConfig,
    FixedSparsityConfig,
    LocalSlidingWindowSparsityConfig,
    SparsityConfig,
    VariableSparsityConfig,
)

__version__ = "0.1.0"

__all__ = [
    "BSLongformerSparsityConfig",
    "BertSparseSelfAttention",
    "BigBirdSparsityConfig",
    "DenseSparsityConfig",
    "ExpertGroups",
    "Experts",
    "FixedSparsityConfig",
    "GateOutput",
    "LocalSlidingWindowSparsityConfig",
    "MOELayer",
    "MoE",
    "SparseAttentionUtils",
    "SparseSelfAttention",
    "SparsityConfig",
    "TopKGate",
    "VariableSparsityConfig",
    "__version__",
    "compute_capacity",
    "create_expert_and_data_parallel",
    "expert_group_name",
    "get_expert_data_parallel_group",
    "get_expert_data_parallel_ranks",
    "get_expert_parallel_group",
    "get_expert_parallel_ranks",
    "is_moe_param",
    "report",
    "sparsity_config_from_dict",
    "split_params_into_different_moe_groups_for_optimizer",
]
