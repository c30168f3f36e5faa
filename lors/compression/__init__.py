"""Compressing a pretrained model into a smaller one you can ship (the library behind ``lors compress``).

::

    cfg = lors.CompressConfig(budget=0.8)                 # the best measured recipe at 80 % of the linears
    small, report = lors.compress(model, calibration_ids, cfg, validation=held_out_ids)
    lors.save_pretrained(small, "smol80", tokenizer, cfg)  # config, tokenizer, tensors, record, provenance
    model = lors.from_pretrained("smol80")                 # no base model needed; model.generate(...) works

Pieces: :mod:`.config` (``CompressConfig``), :mod:`.pipeline` (``compress``), :mod:`.evaluate` (perplexity,
embedding agreement, generation), :mod:`.export` (the self-contained folder), :mod:`.pretrained` (bundled and
on-disk base models), :mod:`.run` (the whole jobs: load, compress, score, save; distil a saved folder further).
"""
from .config import CompressConfig
from .evaluate import (distinct_n, embed, embedding_agreement, generate, greedy_sample, greedy_samples,
                       next_token_agreement, perplexity, repetition, sample_prompts)
from .export import from_pretrained, save_pretrained
from .pipeline import CompressReport, compress
from .run import run, run_distill

__all__ = ["CompressConfig", "CompressReport", "compress", "distinct_n", "embed", "embedding_agreement",
           "from_pretrained", "generate", "greedy_sample", "greedy_samples", "next_token_agreement", "perplexity",
           "repetition", "run", "run_distill", "sample_prompts", "save_pretrained"]
