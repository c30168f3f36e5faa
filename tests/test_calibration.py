"""Calibration-aware init: exact at full rank, lower output error than plain SVD on anisotropic inputs."""
import copy

import pytest
import torch
from torch import nn

import lors
from lors.apply.calibration import input_moments
from lors.nn.spectral import calibrated_shared, output_error, whitened_svd

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack", "ignore:calibration saw no inputs")


class Block(nn.Module):
    def __init__(self, d=24, h=32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, layers=4, d=24, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Block(d) for _ in range(layers)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def anisotropic_batches(n=6, d=24, seed=1):
    """Inputs concentrated in a few directions: per-feature scales from 10 down to 0.01, then a fixed rotation
    (the same distribution for every seed; the seed draws the samples)."""
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(123)))
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, d)
    return [(torch.randn(32, 5, d, generator=g) * scales) @ rotation.T for _ in range(n)]


def test_input_moments_match_the_definition():
    net, batches = Net(), anisotropic_batches(3)
    got = input_moments(net, ["blocks.0.fc1", "blocks.2.fc2"], batches)
    x = torch.cat([b.reshape(-1, 24) for b in batches]).double()
    assert torch.allclose(got["blocks.0.fc1"], x.T @ x / len(x), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        h = torch.cat([torch.tanh(net.blocks[2].fc1(net.blocks[1](net.blocks[0](b)))).reshape(-1, 32)
                       for b in batches]).double()
    assert torch.allclose(got["blocks.2.fc2"], h.T @ h / len(h), rtol=1e-5, atol=1e-7)  # float32 products
    with pytest.raises(ValueError, match="no batches"):
        input_moments(net, ["blocks.0.fc1"], [])


def test_whitened_svd_is_exact_at_full_rank_and_optimal_in_output_space():
    torch.manual_seed(0)
    W = torch.randn(10, 8, dtype=torch.float64)
    X = torch.randn(500, 8, dtype=torch.float64) * torch.logspace(1, -2, 8, dtype=torch.float64)
    C = X.T @ X / len(X)
    U, s, V = whitened_svd(W, C, rank=8)
    assert torch.allclose(U * s @ V, W, atol=1e-8)
    U, s, V = whitened_svd(W, C, rank=3)
    Ur, sr, Vr = torch.linalg.svd(W)
    plain = Ur[:, :3] * sr[:3] @ Vr[:3]
    assert output_error(W, U * s @ V, C) < 0.5 * output_error(W, plain, C)
    # the weighted mean is the least-squares shared weight in output space
    Ws = [torch.randn(10, 8, dtype=torch.float64) for _ in range(3)]
    Cs = [C, C * 2, torch.eye(8, dtype=torch.float64)]
    shared = calibrated_shared(Ws, Cs, damp=0.0)
    loss = lambda M: sum(((w - M) @ c * (w - M)).sum() for w, c in zip(Ws, Cs))
    assert all(loss(shared) <= loss(shared + 1e-3 * torch.randn_like(shared)) for _ in range(5))


def output_gap(model, reference, batches):
    with torch.no_grad():
        num = sum((model(b) - reference(b)).pow(2).sum() for b in batches)
        den = sum((reference(b) - b).pow(2).sum() for b in batches)  # the blocks' contribution
    return float((num / den).sqrt())


def test_calibrated_lors_full_rank_exact_and_beats_plain_svd_at_low_rank():
    base, batches = Net(), anisotropic_batches()
    held_out = anisotropic_batches(seed=9)
    full = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=24, init="calibrated"), calibration=batches)
    assert output_gap(full, base, held_out) < 1e-6
    plain = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=3, init="pretrained"))
    calib = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=3, init="calibrated"), calibration=batches)
    assert lors.count_parameters(plain) == lors.count_parameters(calib)
    assert output_gap(calib, base, held_out) < 0.5 * output_gap(plain, base, held_out)
    # epsilon picks ranks by output error
    eps = lors.convert(copy.deepcopy(base), lors.LorsConfig(epsilon=0.05, init="calibrated"), calibration=batches)
    assert all(max(r.ranks) < 24 for r in eps.lors_conversion.stacks)


def test_calibrated_lct_full_rank_exact_and_beats_plain_svd():
    base, batches = Net(), anisotropic_batches()
    held_out = anisotropic_batches(seed=9)
    full = lors.lct(copy.deepcopy(base), rank=24, skip_if_larger=False, calibration=batches)
    assert output_gap(full, base, held_out) < 1e-6
    plain = lors.lct(copy.deepcopy(base), rank=3)
    calib = lors.lct(copy.deepcopy(base), rank=3, calibration=batches)
    assert lors.count_parameters(plain) == lors.count_parameters(calib)
    assert output_gap(calib, base, held_out) < 0.7 * output_gap(plain, base, held_out)


def test_calibration_argument_errors():
    with pytest.raises(ValueError, match="calibration"):
        lors.convert(Net(), lors.LorsConfig(rank=2, init="calibrated"))
    with pytest.raises(ValueError, match="calibration"):
        lors.convert(Net(), lors.LorsConfig(rank=2), calibration=anisotropic_batches(1))


def test_calibrated_mha_in_projection_exact_at_full_rank():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batches = [torch.randn(4, 6, 16) for _ in range(3)]
    conv = lors.convert(copy.deepcopy(enc), lors.LorsConfig(rank=16, init="calibrated"), calibration=batches)
    x = torch.randn(2, 6, 16)
    assert torch.allclose(conv(x), enc(x), atol=1e-4)


def test_layers_reading_one_tensor_share_one_moment_object():
    from lors.apply.calibration import input_moments

    class QKV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.o = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)

        def forward(self, x):
            return self.o(self.q(x) * self.k(x))

    model = QKV()
    moments = input_moments(model, ["q", "k", "o"], [torch.randn(5, 6) for _ in range(3)])
    assert moments["q"] is moments["k"] and moments["o"] is not moments["q"]
    assert not torch.equal(moments["o"], moments["q"])
