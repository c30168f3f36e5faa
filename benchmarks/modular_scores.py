"""Which MLP neurons a modular decomposition should keep: three scores, one run each, on all-MiniLM-L6-v2.

    python benchmarks/modular_scores.py --budget 0.5

``energy`` (the library's rule): ``E[h_j^2] ||D[:, j]||^2``; ``leverage``: MoDeGPT's ridge leverage scores of the
neurons' correlation, ``diag(C (C + lambda I)^{-1})``; ``leverage*D``: leverage times ``||D[:, j]||^2``. Everything
else is ``lors compress --model minilm --method modular --budget B --shrinkage 0 --recon-steps 0`` (sequential
refit, padding-free calibration on 256 sentences) with the attention as pivoted lct factors (``--attention vo``:
value-output per head, today's ``modular``); prints the held-out embedding agreement.
"""
from __future__ import annotations

import argparse

import torch

import lors.apply.modular as modular
import lors.compression.pipeline as pipeline
from lors.compression import CompressConfig
from lors.compression.run import run
from lors.nn.spectral import damped


def leverage(C, down):
    C = C.double()
    return torch.linalg.solve(damped(C, modular.RIDGE), C).diagonal().clamp_min(0)


SCORES = {"energy": modular.neuron_scores, "leverage": leverage,
          "leverage*D": lambda C, down: leverage(C, down) * down.double().pow(2).sum(0)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--attention", choices=("lct", "vo"), default="lct", help="the attention: lct factors, or "
                   "value-output per head")
    args = p.parse_args(argv)
    library, parts = modular.neuron_scores, pipeline.ATTENTION_PARTS
    pipeline.ATTENTION_PARTS = () if args.attention == "lct" else ("vo",)
    print(f"{'score':<12}{'cos mean':>10}{'cos min':>9}{'top-1':>8}{'recall@10':>11}")
    try:
        for name, score in SCORES.items():
            modular.neuron_scores = score
            config = CompressConfig(method="modular", budget=args.budget, shrinkage=0.0, recon_steps=0)
            row = run("minilm", config, progress=False, log=lambda line: None)["rows"][1]
            print(f"{name:<12}{row['cos_mean']:>10.4f}{row['cos_min']:>9.4f}{row['top1_agree']:>7.1f}%"
                  f"{row['recall@10']:>10.1f}%", flush=True)
    finally:
        modular.neuron_scores, pipeline.ATTENTION_PARTS = library, parts


if __name__ == "__main__":
    main()
