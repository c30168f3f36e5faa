import pytest
import torch
from torch import nn

from lors import LorsLinearStack


@pytest.mark.parametrize("kw,field", [
    (dict(rank=0), "rank"),
    (dict(rank=-3), "rank"),
    (dict(rank=9), "rank"),                      # > min(d_in=8, d_out=10)
    (dict(rank=[1, 2]), "rank"),                 # 2 entries for 3 layers
    (dict(rank=2, groups=[1, 1, 1, 1]), "groups"),
    (dict(rank=2, groups=0), "groups"),
    (dict(rank=2, path="fast"), "path"),
    (dict(rank=2.5), "rank"),
])
def test_static_errors_name_the_argument(kw, field):
    with pytest.raises(ValueError, match=field):
        LorsLinearStack(3, 8, 10, **kw)


def test_wrong_input_shape():
    s = LorsLinearStack(3, 8, 10, rank=2)
    with pytest.raises(ValueError, match=r"last dimension 8"):
        s(torch.randn(4, 7), 0)
    with pytest.raises(IndexError, match="out of range"):
        s(torch.randn(4, 8), 3)


def test_from_linears_errors():
    with pytest.raises(ValueError, match="same shape"):
        LorsLinearStack.from_linears([nn.Linear(4, 3), nn.Linear(4, 2)], rank=1)
    with pytest.raises(ValueError, match=r"rank\*groups"):
        LorsLinearStack.from_linears([nn.Linear(4, 3), nn.Linear(4, 3)], rank=2, groups=2)
