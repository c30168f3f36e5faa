"""Real English sentences already on the machine, split by source into train and held-out sets.

Sources: the long descriptions of installed Python distributions (their PyPI READMEs, from the
installed metadata) and the docstrings of the standard library's modules, read with ``ast``
from the source files (nothing is imported or executed). A *source* is one distribution or
one module; each source goes wholly to the training side or wholly to the held-out side,
decided by a seeded hash of its name, so no held-out sentence (nor its neighbours in the same
text) is seen in calibration or training.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
import sysconfig
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"\[([^\]]*)\]\([^)]*\)|[`*_|#<>]|:\w+:")
_CODE = re.compile(r"[{}=;\\]|>>>|\(\)|::|https?://|\w+\.\w+\(|__\w+__")


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


def package_texts() -> dict[str, str]:
    """``{"pkg:<name>": long description}`` of every installed distribution."""
    texts = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = meta.get("Name")
        body = meta.get_payload() or meta.get("Description") or ""
        if name and body:
            texts[f"pkg:{name.lower()}"] = body
    return texts


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


def held_out(source: str, seed: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def english_sentences(seed: int = 0, eval_fraction: float = 0.3) -> tuple[list[str], list[str]]:
    """(train sentences, held-out sentences), split by source, deduplicated across both sides.

    A sentence that occurs in both a training and a held-out source is dropped from the held-out set.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    train, held = {}, {}
    for source, text in sorted({**package_texts(), **stdlib_texts()}.items()):
        side = held if held_out(source, seed, eval_fraction) else train
        for s in sentences_of(text):
            side.setdefault(s, None)
    return list(train), [s for s in held if s not in train]
