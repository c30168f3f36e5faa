"""How much each layer contributes to the gradient of every shared LORS tensor of a model.

    python benchmarks/stage_gradients.py configs/adamixer_shapes_lors.yaml --checkpoint runs/ada48_lors_s0
    python benchmarks/stage_gradients.py configs/adamixer_shapes_lors.yaml            # at init

A shared tensor's gradient is the sum of the gradients its N layers' uses send it. This script
records each layer's part separately in one backward pass per batch (a recorder takes the place
of the stacks' ``grad_balance`` hook; nothing is rescaled), sums it over the first ``--batches``
training batches, and prints per shared tensor: each layer's norm relative to the largest, the
cosine of each layer's part with the total, and the mean cosine between different layers' parts.
A total dominated by one layer (large norm ratio, cosine near 1 for that layer alone) means
that layer steers the shared tensor (see ``train.shared_grad_balance``).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lors.nn.stack import shared_stacks
from lors.cli.config import load_config
from lors.cli.main import load_for_eval
from lors.cli.experiment import build_experiment
from lors.nn.balance import GradBalance


class Recorder(GradBalance):
    """Keeps each layer's gradient of each shared tensor, summed over backward passes; rescales nothing."""

    def __init__(self, num_layers: int):
        super().__init__(num_layers)
        self.grads: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)

    @torch.no_grad()
    def rescale(self, grad, name, i):
        g = self.grads[name]
        g[i] = g[i] + grad if i in g else grad.clone()
        return grad


def report(stack_name: str, recorder: Recorder) -> None:
    for name, per_layer in recorder.grads.items():
        G = torch.stack([per_layer[i].flatten().double() for i in sorted(per_layer)])  # (N, numel)
        norms = G.norm(dim=1)
        unit = F.normalize(G, dim=1)
        cos_total = unit @ F.normalize(G.sum(0), dim=0)
        pair = unit @ unit.T
        n = len(G)
        off = (pair.sum() - pair.diagonal().sum()) / max(n * (n - 1), 1)
        print(f"{stack_name}.{name}  ({n} layers)")
        print("  norm / largest: " + " ".join(f"{v:.2f}" for v in (norms / norms.max()).tolist()))
        print("  cos with total: " + " ".join(f"{v:+.2f}" for v in cos_total.tolist()))
        print(f"  mean cos between layers: {off:+.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--checkpoint", help="run directory or .json of a trained model (default: the init)")
    ap.add_argument("--batches", type=int, default=4, help="training batches to sum over (default 4)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    exp = build_experiment(cfg)
    torch.manual_seed(cfg.train.seed)
    model = load_for_eval(args.checkpoint, exp, cfg)[0] if args.checkpoint else exp.build_model()
    model.train()
    recorders = {}
    for name, m in shared_stacks(model):
        if hasattr(m, "grad_balance"):
            m.grad_balance = recorders[name] = Recorder(int(m.num_layers))
    if not recorders:
        raise SystemExit(f"{args.config}: the model has no LORS stacks")
    loader = DataLoader(exp.train_set, batch_size=cfg.data.batch_size, shuffle=False,
                        collate_fn=getattr(exp.task, "collate_fn", None))
    device = torch.device("cpu")
    for b, batch in enumerate(loader):
        if b == args.batches:
            break
        model.zero_grad()
        loss, _ = exp.task.loss(model, batch, device)
        loss.backward()
    for name, rec in recorders.items():
        report(name, rec)


if __name__ == "__main__":
    main()
