"""A small LORS GPT whose shared weights every block uses, its data and its Trainer run (test_fsdp.py)."""
import torch

from lors.engine import TrainConfig, Trainer
from lors.engine.distributed import launched_rank, train_loader
from lors.models.gpt import GPT
from lors.tasks.lm import LanguageModelTask

SEQUENCES, LENGTH, GLOBAL_BATCH, VOCAB = 12, 16, 4, 48  # 3 steps per epoch


def build_model() -> GPT:
    return GPT(vocab_size=VOCAB, block_size=LENGTH, dim=32, depth=3, heads=2, mlp_dim=64, variant="lors", rank=[2, 3, 4])


def dataset():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (SEQUENCES, LENGTH + 1), generator=g)
    return torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])


def train(run_dir: str, strategy: str, epochs: int, resume: bool = False) -> list[dict]:
    """Train ``epochs`` epochs of 3 steps (the schedule spans 6 steps), one global batch of 4 split over the ranks."""
    _, world = launched_rank()
    cfg = TrainConfig(epochs=epochs, max_steps=6, warmup_steps=1, lr=3e-3, weight_decay=0.1, clip_grad=0.5, seed=3,
                      device="cpu", progress=False, strategy=strategy)
    data = dataset()
    trainer = Trainer(cfg, LanguageModelTask(), run_dir=run_dir, log=lambda s: None)
    return trainer.fit(build_model, train_loader(data, GLOBAL_BATCH // world, seed=0),
                       torch.utils.data.DataLoader(data, batch_size=6), resume=resume)
