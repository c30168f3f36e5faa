"""Data-parallel training of a model whose shared LORS weights every block uses: FSDP and DDP over 2 gloo
processes equal one process on the same global batch, and a sharded run's checkpoint loads unsharded and back."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lors.engine.checkpoint import load_trained, read_checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fsdp_setup import build_model, dataset, train  # noqa: E402
import torchrun_helper  # noqa: E402


def torchrun(*args):
    torchrun_helper.torchrun(HERE / "fsdp_worker.py", *args, env={"PYTHONPATH": str(HERE)})


def assert_same_model(a: nn.Module, b: nn.Module, atol=1e-5):
    """Every parameter within ``atol``, except the key third of the qkv bias: its gradient is exactly zero (softmax
    ignores a shift of the scores), so AdamW turns rounding noise (~1e-10) into steps of about lr * noise / eps that
    differ between summation orders. It changes no output, which the logits check confirms."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        x, y = pa[k], pb[k]
        if k == "stacks.qkv.bias":
            dim = x.shape[1] // 3
            x, y = torch.cat([x[:, :dim], x[:, 2 * dim:]], 1), torch.cat([y[:, :dim], y[:, 2 * dim:]], 1)
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=k)
    tokens = dataset().tensors[0]
    torch.testing.assert_close(a(tokens), b(tokens), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process: 3 steps (epoch 1), then 3 more after a resume (epoch 2)."""
    out = tmp_path_factory.mktemp("single")
    train(out / "run", "ddp", epochs=1)
    three = load_trained(out / "run", build_model)[0]
    train(out / "run", "ddp", epochs=2, resume=True)
    six = load_trained(out / "run", build_model)[0]
    return three, six


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_equal_one_and_resume(tmp_path, reference, strategy):
    three, six = reference
    run = tmp_path / "run"
    torchrun(run, strategy, 1, "fresh")
    meta, tensors = read_checkpoint(run)
    assert meta["world_size"] == 2 and meta["step"] == 3
    assert tensors["model.stacks.fc1.shared_weight"].shape == (64, 32)  # gathered: full shapes, stored once
    model = load_trained(run, build_model)[0]  # the sharded run's checkpoint in an unsharded model
    assert_same_model(model, three)
    assert not torch.equal(model.stacks.fc1.shared_weight, build_model().stacks.fc1.shared_weight)  # it trained
    groups = {g["name"]: g for g in meta["optimizer_groups"]}
    assert groups["shared/N=3"]["lr_scale"] == pytest.approx(3 ** -0.5)  # lors.param_groups under the strategy
    torchrun(run, strategy, 2, "resume")  # the unsharded checkpoint back into a sharded run: model + AdamW state
    assert_same_model(load_trained(run, build_model)[0], six)


def test_default_units_are_the_blocks_and_stacks_stay_in_the_root():
    from lors.engine.fsdp import default_blocks
    model = build_model()
    assert [id(b) for b in default_blocks(model)] == [id(b) for b in model.blocks]


def test_units_that_would_split_shared_tensors_are_refused():
    from lors.engine.fsdp import fsdp_wrap
    model = build_model()
    with pytest.raises(ValueError, match="LorsLinearStack"):
        fsdp_wrap(model, blocks=[model.stacks])  # the stacks' owner: its tensors are used by every block
    with pytest.raises(ValueError, match="root unit"):
        fsdp_wrap(model, blocks=[model])
    model.blocks[1].norm1.weight = model.blocks[0].norm1.weight  # tied across two units
    with pytest.raises(ValueError, match="tied"):
        fsdp_wrap(model, blocks=list(model.blocks))
    with pytest.raises(ValueError, match="not a submodule"):
        fsdp_wrap(model, blocks=[nn.Linear(2, 2)])
