import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (numeric equivalence tests use 1e-8)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mixing(num_stages=6, dim=256, n_groups=2, in_points=64, out_points=128, variant="dense", **lors):
    """The adaptive mixing of an AdaMixer config with these sizes (query and feature channels ``dim``)."""
    from lors.cli.config import AdaMixerConfig
    from lors.models.adamixer.mixing import build_mixing

    return build_mixing(AdaMixerConfig(num_stages=num_stages, feat_channels=dim, n_groups=n_groups,
                                       in_points=in_points, out_points=out_points, decoder=variant, **lors))
