"""Test-session settings shared by every test file."""
import os
import sys

import torch

# helpers such as detector_utils live next to the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The models and tensors in the tests are small: one intra-op thread is faster than two, and far steadier
# on a busy 2-core machine, where competing OpenMP threads can slow a step down many times over.
torch.set_num_threads(1)
