"""All text in one place: sources, one split rule, tokenizers, token windows.

* :mod:`.sources`: pydoc topics, standard-library docstrings, pinned package descriptions, the King James Bible,
  files under ``data.root``; sentences for the sentence encoders;
* :mod:`.split`: whole documents to train / validation / test by a split seed of its own (``data.split_seed``);
* :mod:`.tokenizers`: bytes or a byte-level BPE, each knowing the bytes behind every token id;
* :mod:`.windows`: the GPT's data sets (whole validation / test splits) and a pretrained LM's fixed windows;
* :mod:`.calibration`: calibration and evaluation text of pretrained LMs (``lors compress``).
"""
from .calibration import (BIBLE_HELD_OUT, CALIBRATION_SOURCES, DISTILL_DATA, EVAL_SOURCES, calibration_text,
                          distillation_text, eval_text, sentence_openings)
from .sources import (PACKAGES, dependency_texts, english_sentences, extra_sentences, file_documents, kjv_documents,
                      package_texts, pydoc_documents, sentence_crops, sentences_of, stdlib_package_texts, stdlib_texts)
from .split import SPLIT_SEED, SPLITS, split_documents, split_text
from .tokenizers import TOKENIZERS, BpeTokenizer, ByteTokenizer, make_tokenizer
from .windows import (CORPORA, TokenChunks, build_lm_dataset, corpus_split, load_corpus, token_windows,
                      window_capacity)

__all__ = ["BIBLE_HELD_OUT", "CALIBRATION_SOURCES", "CORPORA", "DISTILL_DATA", "EVAL_SOURCES", "PACKAGES", "SPLITS",
           "SPLIT_SEED", "TOKENIZERS", "BpeTokenizer", "ByteTokenizer", "TokenChunks", "build_lm_dataset",
           "calibration_text", "corpus_split", "dependency_texts", "distillation_text", "english_sentences",
           "eval_text", "extra_sentences", "file_documents", "kjv_documents", "load_corpus", "make_tokenizer",
           "package_texts", "pydoc_documents", "sentence_crops", "sentence_openings", "sentences_of",
           "split_documents", "split_text", "stdlib_package_texts", "stdlib_texts", "token_windows", "window_capacity"]
