"""Compact save/load of converted models: safetensors (each shared tensor once) + JSON.

``save(model, dir)`` writes ``dir/model.safetensors`` (the converted model's
state_dict: a LORS stack stores its shared weight once, so the file shrinks with
the parameter count) and ``dir/lors.json`` (the conversion records, chosen ranks
and a fingerprint of the base architecture). ``load(base_model, dir)`` replays the
conversion on an unconverted copy of the same architecture and loads the tensors.
Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from .convert import fingerprint, lct, rebuild

FORMAT = "lors-1"


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a converted model to ``directory``; returns the directory."""
    conversion = getattr(model, "lors_conversion", None)
    if conversion is None:
        raise ValueError("model has no lors conversion record; convert it with lors.convert or lors.lct first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    meta = {"format": FORMAT, **conversion}
    (directory / "lors.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(directory / "lors.json.tmp", directory / "lors.json")
    return directory


def load(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """Convert ``base_model`` (in place) as recorded in ``directory`` and load the saved tensors.

    ``base_model`` must be the unconverted architecture the checkpoint was made from;
    a different one raises ``ValueError``.
    """
    directory = Path(directory)
    meta_path = directory / "lors.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no lors.json in {directory}")
    meta = json.loads(meta_path.read_text())
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
    base_model.lors_conversion = {k: v for k, v in meta.items() if k != "format"}
    missing, unexpected = load_model(base_model, str(directory / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"saved tensors do not fit the rebuilt model: missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    return base_model
