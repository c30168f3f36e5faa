"""How much recall@10 a mean cosine allows: MiniLM's held-out embeddings under isotropic noise, against students.

    OMP_NUM_THREADS=1 python benchmarks/recall_vs_cosine.py runs/s11/minilm_ext2000

The 1,000 held-out sentences of split seed 0 are embedded by the original all-MiniLM-L6-v2. Each sentence's
embedding is then turned by the same angle toward a random direction (one seeded unit vector per sentence,
orthogonal to it), so that every cosine to the original is the target, and scored as ``lors compress`` scores a
student (mean / min cosine, top-1 agreement, recall@10). Every folder given (``lors compress`` / ``lors distill``
output) is scored the same way, with the mean cosine isotropic noise needs for the same recall@10, and by bands of
the original embeddings' principal directions (0-10, 10-50, 50-100, 100-200, 200-384, by spread): the share of
the student's error energy in the band, and the scores of the original with only that part of the error added.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

TARGETS = (0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
BANDS = ((0, 10), (10, 50), (50, 100), (100, 200), (200, None))


def noisy(reference: torch.Tensor, target: float, seed: int = 0) -> torch.Tensor:
    """``reference`` (N, D) unit rows, each turned by the angle ``arccos(target)`` toward its own random direction
    (orthogonal to it): every row's cosine to its original is ``target``."""
    direction = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed))
    direction = F.normalize(direction - (direction * reference).sum(-1, keepdim=True) * reference, dim=-1)
    return target * reference + (1 - target ** 2) ** 0.5 * direction


def cosine_for_recall(reference: torch.Tensor, recall: float, seed: int = 0) -> float:
    """The mean cosine at which isotropic noise gives ``recall`` (recall@10, %), by bisection (recall rises with
    the cosine)."""
    from lors.compression.evaluate import embedding_agreement

    low, high = 0.5, 0.9999
    for _ in range(25):
        mid = (low + high) / 2
        low, high = (mid, high) if embedding_agreement(reference, noisy(reference, mid, seed))["recall@10"] < recall \
            else (low, mid)
    return (low + high) / 2


def band_scores(reference: torch.Tensor, student: torch.Tensor, basis: torch.Tensor) -> list[dict]:
    """Per band of ``basis`` rows (principal directions, largest spread first): the share of the error
    ``student - reference`` in the band and the agreement of ``reference`` plus only that part of the error."""
    from lors.compression.evaluate import embedding_agreement

    error, rows = student - reference, []
    for low, high in BANDS:
        part = basis[low:high]
        moved = error @ part.T @ part
        rows.append({"band": f"{low}-{high or len(basis)}", "energy": float(moved.pow(2).sum() / error.pow(2).sum()),
                     **embedding_agreement(reference, F.normalize(reference + moved, dim=-1))})
    return rows


def main(argv=None) -> dict:
    import lors
    from lors.compression.export import read_meta
    from lors.compression.evaluate import embed, embedding_agreement, token_batches
    from lors.compression.pretrained import load_encoder
    from lors.compression.run import held_out_sentences

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", help="compressed MiniLM folders to place on the curve")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    try:  # each folder's lors.json, with the library's one-line error
        for folder in args.folders:
            read_meta(folder)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    teacher, tokenizer = load_encoder("minilm", progress=False)
    batches = token_batches(tokenizer, held_out_sentences(0, 1000)[1], 64)
    reference = embed(teacher, batches)
    result = {"noise": [], "students": []}
    print(f"{'isotropic noise, mean cosine':<34}{'cos min':>9}{'top-1':>8}{'recall@10':>11}")
    for target in TARGETS:
        row = {"target": target, **embedding_agreement(reference, noisy(reference, target))}
        result["noise"].append(row)
        print(f"{target:<34}{row['cos_min']:>9.3f}{row['top1_agree']:>7.1f}%{row['recall@10']:>10.1f}%")
    _, _, basis = torch.linalg.svd(reference - reference.mean(0), full_matrices=False)
    for folder in args.folders:
        student = embed(lors.from_pretrained(folder), batches)
        row = {"folder": folder, **embedding_agreement(reference, student)}
        row["noise_cosine_same_recall"] = cosine_for_recall(reference, row["recall@10"])
        print(f"{folder}: mean cosine {row['cos_mean']:.4f}, recall@10 {row['recall@10']:.1f} % = isotropic noise at "
              f"mean cosine {row['noise_cosine_same_recall']:.4f}")
        row["bands"] = band_scores(reference, student, basis)
        for band in row["bands"]:
            print(f"  error in principal directions {band['band']}: {100 * band['energy']:.1f} % of its energy; the "
                  f"original plus only that part: mean cosine {band['cos_mean']:.4f}, "
                  f"recall@10 {band['recall@10']:.1f} %")
        result["students"].append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
