"""Run by tests/test_engine.py under torchrun: trains a tiny LORS ViT with DDP, saves this rank's weights."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from lors.config import load_config
from lors.data.classification import build_dataset
from lors.engine.fit import fit
from lors.models.vit import BLOCK_LINEARS, build_vit

out = Path(sys.argv[1])
overrides = sys.argv[2:]
cfg = load_config(None, overrides)
train_set = build_dataset(cfg.data, "train", cfg.train.seed, train=True)
test_set = build_dataset(cfg.data, "test", cfg.train.seed)
models = []
fit(cfg, lambda: models.append(build_vit(cfg.model)) or models[-1], train_set, test_set, out / "run",
    lct_targets=BLOCK_LINEARS, log=lambda s: None)
rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in models[0].state_dict().items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.steps").write_text(str(len(train_set)))
dist.barrier()  # no rank tears gloo down while the other still uses it (rare abort at exit)
dist.destroy_process_group()
