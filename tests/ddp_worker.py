"""Run by tests/test_engine.py under torchrun: trains a tiny LORS ViT with DDP, saves this rank's weights."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file
from torchrun_helper import DONE

from lors.cli.config import load_config
from lors.cli.experiment import build_experiment, run_training

out = Path(sys.argv[1])
overrides = sys.argv[2:]
cfg = load_config(None, overrides)
exp = build_experiment(cfg)
models, build = [], exp.build_model
exp.build_model = lambda: models.append(build()) or models[-1]
run_training(cfg, out / "run", log=lambda s: None, experiment=exp)
rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in models[0].state_dict().items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.steps").write_text(str(len(exp.train_set)))
dist.barrier()  # no rank tears gloo down while the other still uses it (rare abort at exit)
print(DONE, flush=True)
dist.destroy_process_group()
