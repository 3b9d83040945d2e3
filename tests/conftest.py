"""Session set-up shared by every test module."""
import os

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter. The switch must be set before
# anything imports triton (a module's importorskip at collection already does), so it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def exact_float32():
    """Exact float32 products for reference comparisons of the Triton kernels (tests that want TF32 set it
    themselves); the modules comparing against the reference use it for every test."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)
