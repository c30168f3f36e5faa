"""Time the AdaMixer decoder, LORS vs dense, forward + backward, in one run.

Random pyramid features stand in for the backbone (its cost is the same for both decoders).
Default: the LORS paper's decoder (256-d queries, 100 queries, 6 stages, 8 heads, 2 sampling
groups x 64 in-points, 128 out-points, 16x16 cores, K = [1, 1, 2, 2, 3, 3], out rank 8) at a
512 x 512 input, batch 2. ``--preset shapes`` uses configs/adamixer_shapes_*.yaml's decoder.

    python benchmarks/bench_adamixer.py [--preset paper|shapes] [--batch 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lors import count_parameters
from lors.models.adamixer.boxes import box_xyxy_to_xyzr
from lors.cli.config import AdaMixerConfig
from lors.models.adamixer.decoder import build_decoder

PRESETS = {
    "paper": dict(query_dim=256, num_queries=100, num_heads=8, n_groups=2, in_points=64, out_points=128,
                  ffn_dim=2048, core_size=16, out_rank=8, image=512, num_classes=80),
    "shapes": dict(query_dim=64, num_queries=30, num_heads=4, n_groups=2, in_points=16, out_points=64,
                   ffn_dim=256, core_size=4, out_rank=8, image=128, num_classes=3),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=tuple(PRESETS), default="paper")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    B, d, N, S = args.batch, p["query_dim"], p["num_queries"], p["image"]
    decoders = {v: build_decoder(AdaMixerConfig(
        num_stages=6, feat_channels=d, num_classes=p["num_classes"], num_heads=p["num_heads"], n_groups=p["n_groups"],
        in_points=p["in_points"], out_points=p["out_points"], ffn_dim=p["ffn_dim"], decoder=v,
        core_size=p["core_size"], core_groups=[1, 1, 2, 2, 3, 3], out_rank=p["out_rank"])) for v in ("dense", "lors")}
    with torch.no_grad():  # non-trivial LORS residuals (they start at zero)
        for prm in decoders["lors"].mixing.parameters():
            if prm.abs().sum() == 0:
                prm.normal_(std=0.01)
    strides = (4, 8, 16, 32)
    features = [torch.randn(B, d, S // s, S // s) for s in strides]
    boxes = torch.rand(B, N, 2) * S * 0.6
    xyzr = box_xyxy_to_xyzr(torch.cat([boxes, boxes + 16 + torch.rand(B, N, 2) * S * 0.3], -1))
    content = torch.randn(B, N, d)

    def step(dec):
        dec.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        outs = dec(content, xyzr, features, strides)
        sum(logits.sum() + boxes.sum() for logits, boxes in outs).backward()
        return time.perf_counter() - t0

    for dec in decoders.values():
        step(dec)  # warm-up
    times = {k: [] for k in decoders}
    for _ in range(args.repeats):
        for k, dec in decoders.items():
            times[k].append(step(dec))
    med = {k: statistics.median(v) for k, v in times.items()}
    params = {k: count_parameters(dec) for k, dec in decoders.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, preset {args.preset}: batch {B}, "
          f"{N} queries, {S}x{S} input; median of {args.repeats} decoder forward+backward passes")
    print(f"{'decoder':<8}{'params':>14}{'ms/step':>10}{'time/dense':>12}{'params/dense':>14}")
    for k in decoders:
        print(f"{k:<8}{params[k]:>14,}{1000 * med[k]:>10.1f}{med[k] / med['dense']:>12.3f}"
              f"{params[k] / params['dense']:>14.3f}")


if __name__ == "__main__":
    main()
