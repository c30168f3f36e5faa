import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lors.cli.config import ConfigError, load_config
from lors.cli.demo import demo_config
from lors.models.vit import build_vit
from lors.cli.paper import DEIT_TINY, vit_linear_counts

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_names_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  dimm: 3\n")
    with pytest.raises(ConfigError, match=r"model\.dimm.*allowed keys: .*dim"):
        load_config(f)


@pytest.mark.parametrize("override,key", [("train.epochs=ten", "train.epochs"), ("model.rank=[1, x]", "model.rank"),
                                          ("data.augment=3", "data.augment"), ("trainer.lr=1", "trainer")])
def test_ill_typed_or_unknown_override(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_overrides_parse_yaml_values():
    cfg = load_config(ROOT / "configs/digits_vit_lors.yaml", ["model.rank=[1,2,3,4,5,6,7,8,9,10,11,12]",
                                                             "train.lr=3e-4"])
    assert cfg.model.rank == list(range(1, 13)) and cfg.train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
@pytest.mark.parametrize("variant", ["dense", "lors", "lct"])
def test_shipped_configs_equal_the_demo(variant, dataset):
    cfg = load_config(ROOT / f"configs/{dataset}_vit_{variant}.yaml")
    demo = demo_config(variant, dataset=dataset)
    cfg.train.output_dir = demo.train.output_dir
    assert cfg == demo


def test_deit_tiny_lors_count_matches_closed_form():
    cfg = load_config(ROOT / "configs/deit_tiny_cifar100_lors.yaml")
    with torch.device("meta"):
        m = build_vit(cfg.model)
    c = vit_linear_counts(**DEIT_TINY)
    norms = 12 * 2 * 2 * 192
    assert m.block_parameter_count() == c.lors + norms
    out = subprocess.run([sys.executable, "-m", "lors.cli", "count", str(ROOT / "configs/deit_tiny_cifar100_lors.yaml")],
                         capture_output=True, text=True, check=True).stdout
    dense_blocks = c.dense + norms
    assert f"blocks {c.lors + norms:,} vs dense {dense_blocks:,}" in out
    assert f"({100 * (1 - (c.lors + norms) / dense_blocks):.1f}% fewer)" in out


def test_cli_reports_config_errors(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: many\n")
    r = subprocess.run([sys.executable, "-m", "lors.cli", "count", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and "train.epochs" in r.stderr


def test_detection_ffn_rank_and_stage_bias_keys():
    cfg = load_config(ROOT / "configs/adamixer_shapes_lors.yaml", ["model.ffn_rank=4", "model.stage_bias=false"])
    assert cfg.model.ffn_rank == 4 and cfg.model.stage_bias is False
    with pytest.raises(ConfigError, match=r"model\.ffn_rank.*positive rank; got -2"):
        load_config(ROOT / "configs/adamixer_shapes_lors.yaml", ["model.ffn_rank=-2"])
    cfg = load_config(ROOT / "configs/adamixer_shapes_lors.yaml", ["model.stage_bias=true",
                                                                   "model.stage_bias_init=random"])
    assert cfg.model.stage_bias_init == "random"
    with pytest.raises(ConfigError, match=r"model\.stage_bias_init.*'zero', 'random'; got 'normal'"):
        load_config(ROOT / "configs/adamixer_shapes_lors.yaml", ["model.stage_bias=true", "model.stage_bias_init=normal"])
    with pytest.raises(ConfigError, match=r"model\.stage_bias_init: random' needs .*model\.stage_bias: true"):
        load_config(ROOT / "configs/adamixer_shapes_lors.yaml", ["model.stage_bias_init=random"])


def test_digits_cola_config_is_the_demo_run_with_cola_blocks_and_counts_in_closed_form():
    cfg = load_config(ROOT / "configs/digits_vit_cola.yaml")
    dense = demo_config("dense")
    assert cfg.train == dataclasses.replace(dense.train, output_dir="runs/digits_vit_cola") and cfg.data == dense.data
    assert (cfg.model.variant, cfg.model.lct_rank, cfg.model.dense_blocks) == ("cola", 6, [0, -1])
    model = build_vit(cfg.model)
    shapes = [(64, 192), (64, 64), (64, 128), (128, 64)]
    per_dense = sum(i * o + o for i, o in shapes) + 4 * 64
    per_cola = sum(6 * (i + o) + o for i, o in shapes) + 4 * 64
    assert model.block_parameter_count() == 2 * per_dense + 10 * per_cola
    assert 1 - model.block_parameter_count() / (12 * per_dense) > 0.70
