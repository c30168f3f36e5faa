"""Compact save/load of converted models: safetensors (each shared tensor once) + JSON.

``save(model, dir)`` writes ``dir/model.safetensors`` (the converted model's
state_dict: a LORS stack stores its shared weight once, so the file shrinks with
the parameter count) and ``dir/lors.json`` (the conversion records, chosen ranks
and a fingerprint of the base architecture). ``load(base_model, dir)`` replays the
conversion on an unconverted copy of the same architecture and loads the tensors.

``dir`` may also be a Hugging Face model folder or ``transformers.Trainer``
checkpoint written by a converted model's ``save_pretrained`` (see :mod:`lors.hf`).
Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from .convert import apply_freezing, fingerprint, lct, rebuild, tied_parameter_ids
from .hf import FORMAT, install_save_pretrained, write_record

WEIGHTS = "model.safetensors"


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a converted model to ``directory``; returns the directory."""
    conversion = getattr(model, "lors_conversion", None)
    if conversion is None:
        raise ValueError("model has no lors conversion record; convert it with lors.convert or lors.lct first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    write_record(model, directory)
    return directory


def _read_tensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e} (the file is damaged or not a safetensors file)") from None


def load(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """Convert ``base_model`` (in place) as recorded in ``directory`` and load the saved tensors.

    ``base_model`` must be the unconverted architecture the checkpoint was made from;
    a different one raises ``ValueError``. ``directory`` is a folder written by :func:`save`
    or by a converted model's ``save_pretrained`` (including a Trainer checkpoint).
    """
    directory = Path(directory)
    meta_path = directory / "lors.json"
    if not meta_path.is_file():
        weights = directory / WEIGHTS
        if weights.is_file() and any(".lors_" in k or k.startswith("lors_") for k in _read_tensors(weights)):
            raise FileNotFoundError(f"{weights} holds a converted model's weights (lors_* keys) but {directory} has "
                                    "no lors.json, so the conversion cannot be replayed; save converted models with "
                                    "lors.save(model, dir) or the converted model's own save_pretrained")
        raise FileNotFoundError(f"no lors.json in {directory}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); the file is damaged") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    found = fingerprint(base_model)
    if found != meta["base_fingerprint"]:
        raise ValueError(f"checkpoint in {directory} was saved from a different base model (architecture "
                         f"fingerprint {meta['base_fingerprint']}, this model {found}); build the same "
                         "architecture, unconverted, and load onto it")
    for record in meta["stacks"]:
        rebuild(base_model, record)
    if meta.get("lct"):
        lct(base_model, rank=meta["lct"], targets="|".join(map(re.escape, meta["lct"])))
    base_model.lors_conversion = {k: v for k, v in meta.items() if k not in ("format", "marker")}
    tensors = _read_tensors(directory / WEIGHTS)
    tensors.pop(meta.get("marker"), None)
    missing, unexpected = base_model.load_state_dict(tensors, strict=False)
    # save_pretrained and safetensors store a tied tensor once: a missing name is fine when its tensor was loaded
    params = dict(base_model.named_parameters(remove_duplicate=False))
    tied, loaded = tied_parameter_ids(base_model), {id(params[k]) for k in tensors if k in params}
    missing = [k for k in missing if not (k in params and id(params[k]) in tied and id(params[k]) in loaded)]
    if missing or unexpected:
        raise ValueError(f"saved tensors do not fit the rebuilt model: missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    if meta.get("config"):
        apply_freezing(base_model, meta["config"])
    install_save_pretrained(base_model)
    return base_model
