import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (numeric equivalence tests use 1e-8)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
