"""1-bit Adam, 0/1 Adam and 1-bit LAMB, and the compressed collective they share.

The optimizers communicate by themselves over any ``torch.distributed`` backend (they must
be given each rank's local gradients) and run without a process group on one rank.
"""

from ._adam import OnebitAdam
from ._collective import CompressedAllreduce
from ._comm import CommCounter, CommGroup
from ._lamb import OnebitLamb
from ._signs import compress, decompress, pack_signs, unpack_signs
from ._zoadam import ZeroOneAdam

__all__ = [
    "CommCounter",
    "CommGroup",
    "CompressedAllreduce",
    "OnebitAdam",
    "OnebitLamb",
    "ZeroOneAdam",
    "compress",
    "decompress",
    "pack_signs",
    "unpack_signs",
]
