"""One intra-op thread per test process: the CI machine is small and shared."""

import torch

torch.set_num_threads(1)
