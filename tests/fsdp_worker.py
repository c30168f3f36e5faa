"""Run by tests/test_fsdp.py: the shared LORS GPT of tests/fsdp_setup.py trained by the Trainer under a strategy.

argv: run directory, strategy (ddp | fsdp), epochs, "resume" or "fresh". Started by torchrun (2 gloo processes) or
directly (one process, the reference). The Trainer writes the checkpoint; nothing else is saved.
"""
import sys

import torch.distributed as dist

from fsdp_setup import train
from torchrun_helper import DONE

run_dir, strategy, epochs, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
train(run_dir, strategy, epochs, resume=mode == "resume")
if dist.is_initialized():
    dist.barrier()
    print(DONE, flush=True)
    dist.destroy_process_group()
else:
    print(DONE, flush=True)
