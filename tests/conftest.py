"""Session set-up shared by every test module."""
import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter. The switch must be set before
# anything imports triton (a module's importorskip at collection already does), so it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
