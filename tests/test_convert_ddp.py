from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchrun_helper import torchrun

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("checkpointing", [False, True])
def test_converted_model_under_ddp_two_cpu_processes(tmp_path, checkpointing):
    torchrun(HERE / "ddp_convert_worker.py", tmp_path, "1" if checkpointing else "0")
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    key = "encoder.lors_layers.linear1.shared_weight"
    assert key in w0 and w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert w0["encoder.lors_layers.linear1.B.2"].abs().sum() > 0  # identical layers: residuals start at 0 and train
