"""Run under torchrun by tests/test_convert_ddp.py: trains a LORS-converted TransformerEncoder with DDP.

argv: OUT_DIR CHECKPOINTING(0|1). Each rank writes its final weights to OUT_DIR/rank<r>.safetensors.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from torchrun_helper import DONE

import lors


class Net(nn.Module):
    def __init__(self, checkpointing):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(16, 1)
        self.checkpointing = checkpointing

    def forward(self, x):
        for layer in self.encoder.layers:  # shared LORS weights are used by every layer
            x = checkpoint(layer, x, use_reentrant=False) if self.checkpointing else layer(x)
        return self.head(x.mean(1))


out, use_ckpt = Path(sys.argv[1]), sys.argv[2] == "1"
dist.init_process_group("gloo")
rank = dist.get_rank()
net = Net(use_ckpt)
lors.convert(net, lors.LorsConfig(rank=2))
ddp = DistributedDataParallel(net)
opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
for _ in range(4):
    x, y = torch.randn(8, 5, 16, generator=g), torch.randn(8, 1, generator=g)
    loss = nn.functional.mse_loss(ddp(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
save_model(net, str(out / f"rank{rank}.safetensors"))
dist.barrier()  # no rank tears gloo down while the other still uses it (rare abort at exit)
print(DONE, flush=True)
dist.destroy_process_group()
