"""Time LORS and LCT layers against dense ones, in one run, and print the ratios.

Setting: a ViT-sized stack of 12 linear layers (d = 384 by default), input of
64 images x 65 tokens. One "step" = forward through all 12 layers + backward.
Timings are medians over --repeats steps, measurements of the variants interleaved.

    python benchmarks/bench_layers.py [--dim 384] [--layers 12] [--batch 64] [--tokens 65] [--device cuda] [--bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lors import LinearStack, LorsLinearStack, LowRankLinear


class LowRankStack(nn.Module):
    """12 independent LowRankLinear layers with the stack(x, i) interface."""

    def __init__(self, n, d_in, d_out, rank):
        super().__init__()
        self.layers = nn.ModuleList([LowRankLinear(d_in, d_out, rank) for _ in range(n)])

    def forward(self, x, i):
        return self.layers[i](x)


AMP = {"enabled": False}  # bf16 autocast of the forward pass (--bf16)


def step(stack, x, n):
    y = x
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=AMP["enabled"]):
        for i in range(n):
            y = stack(y, i)
    y.float().square().mean().backward()


def median_time(stack, x, n):
    stack.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(stack, x, n)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=65)
    ap.add_argument("--rank", type=int, default=32, help="LORS residual rank")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = ap.parse_args()
    AMP["enabled"] = args.bf16
    torch.manual_seed(0)
    d, n, T = args.dim, args.layers, args.batch * args.tokens
    groups = [1] * (n - 3) + [2, 4, 6] if n >= 3 else 1  # the paper's attention group schedule
    lr_rank = d // 4
    variants = {
        "dense": LinearStack(n, d, d),
        "lors": LorsLinearStack(n, d, d, rank=args.rank, groups=groups),
        "lowrank": LowRankStack(n, d, d, lr_rank),
    }
    variants = {k: v.to(args.device) for k, v in variants.items()}
    with torch.no_grad():
        for b in variants["lors"].B:
            b.normal_(std=0.01)
    x = torch.randn(args.batch, args.tokens, d, device=args.device)
    for v in variants.values():  # warm-up
        step(v, x, n)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, v in variants.items():
            times[k].append(median_time(v, x, n))
    med = {k: statistics.median(t) for k, t in times.items()}

    # training-step FLOPs (forward + backward = 3x forward matmul work)
    dense_flops = 3 * 2 * n * T * d * d
    R = sum(r * k for r, k in zip(variants["lors"].ranks, variants["lors"].groups))
    lors_flops = dense_flops + 3 * 2 * R * d * d  # + building W_i = W + B A and its backward
    lowrank_flops = 3 * 2 * n * T * lr_rank * 2 * d

    print(f"torch {torch.__version__}, {args.device}{' bf16' if args.bf16 else ''}, threads {torch.get_num_threads()}, "
          f"{n} layers of {d}->{d}, input {args.batch}x{args.tokens} tokens, LORS rank {args.rank} "
          f"groups {groups}, LowRankLinear rank {lr_rank}; median of {args.repeats} fwd+bwd steps")
    print(f"{'variant':<10}{'ms/step':>10}{'time/dense':>12}{'FLOPs/dense':>13}")
    for k, f in [("dense", dense_flops), ("lors", lors_flops), ("lowrank", lowrank_flops)]:
        print(f"{k:<10}{1000 * med[k]:>10.1f}{med[k] / med['dense']:>12.3f}{f / dense_flops:>13.3f}")


if __name__ == "__main__":
    main()
