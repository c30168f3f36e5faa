"""The typed conversion record: one entry per conversion, JSON round trip, exact replay, old formats."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lors
from lors.apply.record import FORMAT, Conversion, ConversionRecord, StackEntry
from lors.cli.config import load_config
from lors.cli.experiment import run_training
from lors.cli.main import main

DATA = Path(__file__).resolve().parent / "data"


def encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_convert_twice_records_each_conversion_and_round_trips_exactly(tmp_path):
    enc = lors.convert(encoder(), lors.LorsConfig(rank=2, targets=["linear1"], freeze_base=True, train_shared=False))
    lors.convert(enc, lors.LorsConfig(rank=3, targets=["linear2"]))
    record = enc.lors_conversion
    assert [c.kind for c in record.conversions] == ["lors", "lors"]
    assert record.conversions[0].config["freeze_base"] and not record.conversions[1].config["freeze_base"]
    assert [[s.target for s in c.stacks] for c in record.conversions] == [["linear1"], ["linear2"]]
    # the first conversion froze everything outside its stack and its shared weight; the second's stack trains
    before = trainable(enc)
    assert len(before) == 15
    assert "lors_layers.linear1.shared_weight" not in before
    assert "lors_layers.linear2.shared_weight" in before and "layers.0.norm1.weight" not in before
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    lors.save(enc, tmp_path)
    loaded = lors.load(encoder(seed=1), tmp_path)
    assert trainable(loaded) == before  # lors 0.1 replayed only the last config: 15 trainable tensors became 40
    for (n, a), (m, b) in zip(enc.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(a, b)
    x = torch.randn(2, 5, 8)
    assert torch.equal(enc.eval()(x), loaded.eval()(x))
    assert loaded.lors_conversion.to_dict() == record.to_dict()


def test_conversion_record_json_round_trip():
    enc = lors.convert(encoder(), lors.LorsConfig(rank=2, targets=["linear1"], layers_to_transform=[0, 2]))
    lors.lct(enc, rank=2, targets=r"layers\.1\.linear2")
    record = enc.lors_conversion
    again = ConversionRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.to_dict()["format"] == FORMAT
    assert isinstance(again.conversions[0].stacks[0], StackEntry) and again.conversions[0].stacks[0].layers == [0, 2]
    assert again.lct_ranks == {"layers.1.linear2": 2} and again.conversions[1].kind == "lct"
    assert lors.LorsConfig.from_dict(again.conversions[0].config) == lors.LorsConfig(
        rank=2, targets=["linear1"], layers_to_transform=[0, 2])
    assert lors.LctConfig.from_dict(again.conversions[1].config).rank == 2


@pytest.mark.parametrize("bad,match", [({"format": "lors-9", "base_fingerprint": "x"}, "format 'lors-9'"),
                                       ({"format": FORMAT}, "not a valid"), ([1, 2], "JSON object")])
def test_conversion_record_rejects_foreign_json(bad, match):
    with pytest.raises(ValueError, match=match):
        ConversionRecord.from_dict(bad)
    with pytest.raises(ValueError, match="kind"):
        Conversion("svd")
    with pytest.raises(ValueError, match="unknown LorsConfig field"):
        lors.LorsConfig.from_dict({"rank": 2, "rnak": 3})


def test_lors1_checkpoint_from_lors_0_1_still_loads():
    """tests/data/lors1_encoder was written by lors 0.1 (tests/data/README.md): a LORS conversion then LCT."""
    loaded = lors.load(encoder(seed=3), DATA / "lors1_encoder")
    kinds = [c.kind for c in loaded.lors_conversion.conversions]
    assert kinds == ["lct", "lors"]  # replayed as lors 0.1 replayed it
    io = load_file(str(DATA / "lors1_encoder" / "io.safetensors"))
    assert torch.allclose(loaded.eval()(io["x"]), io["y"], atol=1e-6)


def test_training_checkpoint_from_lors_0_1_evaluates_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(DATA / "lors1_lct_run", run)
    assert main(["eval", "--checkpoint", str(run)]) == 0  # its config is upgraded, its LCT factors rebuilt
    out = capsys.readouterr().out
    top1 = json.loads((run / "last.json").read_text())["history"][-1]["top1"]
    assert f"top1={top1:.4f}" in out
    cfg = load_config(None, ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32",
                             "model.patch_size=4", "train.progress=false", "train.warmup_epochs=1", "train.epochs=3",
                             "lct.epsilon=0.6", "lct.warmup_epochs=1"])
    history = run_training(cfg, run, resume=True, log=lambda s: None)
    assert len(history) == 3 and history[-1]["params"] == history[1]["params"]  # the schedule knew it was done
