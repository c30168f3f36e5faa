"""Block reconstruction's learning rate, steps and loss, probed on single SmolLM2 blocks from one start.

    python benchmarks/recon_probe.py --budget 0.6 --blocks 0,8,16,24,29 --settings 64:1e-4:total,64:3e-4:total,\
        128:1e-4:total,256:1e-4:total,128:1e-3:total
    python benchmarks/recon_probe.py --budget 0.8 --blocks 2,8,16,24,29

A one-shot fit (``CompressConfig.fast``: the budget's default method and allocation, shrinkage 0.2) on 64
calibration windows of 256 tokens; each probed block is trained (:func:`lors.apply.reconstruct.reconstruct_block`)
from that same start toward the original block's outputs, on the original network's inputs to it, with every
``steps:lr:loss`` setting; prints the block's relative output error before -> after on the calibration windows (in
the setting's own loss) and on 16 held-out windows of the same sources in both weightings (``token``: each token
relative to its own norm; ``total``: summed over tokens). Machine: 2 CPU cores; the weights start from a 4-bit grid.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

SETTINGS = ((128, 1e-3, "total"), (128, 1e-3, "token"), (512, 1e-3, "token"), (512, 3e-4, "token"))


def main(argv=None) -> None:
    from lors.apply.budget import output_sensitivity, stack_linears
    from lors.apply.calibration import input_moments
    from lors.apply.reconstruct import RECON_LOSSES, block_error, reconstruct_block
    from lors.apply.sequential import _run, block_inputs
    from lors.compression import CompressConfig
    from lors.compression.pipeline import as_batches, fit
    from lors.compression.pretrained import load_causal_lm
    from lors.data.text import calibration_text, token_windows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.6)
    p.add_argument("--blocks", default="0,8,16,24,29")
    p.add_argument("--settings", default=",".join(f"{s}:{lr:g}:{loss}" for s, lr, loss in SETTINGS),
                   help="comma-separated steps:lr:loss triples to probe on each block")
    args = p.parse_args(argv)
    try:
        settings = [(int(s), float(lr), loss) for s, lr, loss in (item.split(":") for item in args.settings.split(","))]
    except ValueError:
        settings = []
    if not settings or any(loss not in RECON_LOSSES for _, _, loss in settings):
        p.error(f"--settings: expected steps:lr:loss triples (loss: {' or '.join(RECON_LOSSES)}) such as "
                f"128:1e-3:token, got {args.settings!r}")
    probed = {int(b) for b in args.blocks.split(",")}
    torch.manual_seed(0)
    teacher, tokenizer = load_causal_lm("smollm2", progress=False)
    texts = calibration_text("mixed")
    calib = as_batches(token_windows(tokenizer, texts, 64, 256), 4)
    held = as_batches(token_windows(tokenizer, texts, 16, 256, skip=1), 4)
    cfg = CompressConfig.fast(budget=args.budget).resolve("lm", teacher)  # the default method and allocation
    container, _, paths = stack_linears(teacher)
    sensitivity = output_sensitivity(teacher, paths, calib, "lm") if cfg.allocation == "sensitivity" else None
    student = fit(teacher, cfg, input_moments(teacher, paths, calib), 0.2, calib, sequential=False,
                  sensitivity=sensitivity)
    print(f"start: {cfg.method}, allocation {cfg.allocation}, one-shot, shrinkage 0.2", flush=True)
    originals, compressed = list(teacher.get_submodule(container)), list(student.get_submodule(container))
    with torch.no_grad():
        streams = []
        for batches in (calib, held):
            hiddens, calls = block_inputs(teacher, originals, batches)
            streams.append([hiddens, calls])
    for i, (original, block) in enumerate(zip(originals, compressed)):
        inputs = [[(h, *c[i]) for h, c in zip(*s)] for s in streams]
        with torch.no_grad():
            targets = [[_run(original, *x) for x in xs] for xs in inputs]
        if i in probed:
            for steps, lr, loss in settings:
                trained, start = copy.deepcopy(block), time.time()
                result = reconstruct_block(trained, inputs[0], targets[0], None, steps, lr, loss)
                held_out = ", ".join(f"{w} {block_error(block, inputs[1], targets[1], loss=w):.5f} -> "
                                     f"{block_error(trained, inputs[1], targets[1], loss=w):.5f}" for w in RECON_LOSSES)
                print(f"block {i} steps {steps} lr {lr:g} loss {loss}: calibration {result.before:.5f} -> "
                      f"{result.after:.5f}; held-out {held_out} ({time.time() - start:.1f} s)", flush=True)
        for s, t in zip(streams, targets):  # the next block's inputs: the original network's
            s[0] = t


if __name__ == "__main__":
    main()
