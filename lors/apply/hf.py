"""Hugging Face ``save_pretrained`` for converted models: the conversion record travels with the weights.

A converted model's ``state_dict`` holds LORS stacks and factors instead of the
original block weights. Saved with plain ``save_pretrained`` and reloaded with
``from_pretrained`` on the original class, transformers would re-initialise every
converted weight and only log a load report. :func:`install_save_pretrained` makes
a converted model's ``save_pretrained`` (which ``transformers.Trainer`` calls for
its checkpoints) also write ``lors.json`` beside ``model.safetensors``, so that
``lors.load(base_model, folder)`` restores it, and adds a one-element marker tensor
under the name of one converted weight. ``from_pretrained`` on the unconverted class
then stops with a size-mismatch error naming that weight instead of loading
silently; ``lors.load`` drops the marker.
"""
from __future__ import annotations

import json
import os
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .discovery import IN_PROJ
from .linears import unique_tensors
from .record import ConversionRecord, get_record


def marker_key(record: ConversionRecord) -> str:
    """The original (unconverted) parameter name of the first converted weight."""
    if record.stacks:
        entry = record.stacks[0]
        first, target = entry.layers[0], entry.target
        if target.endswith(IN_PROJ):
            return f"{entry.container}.{first}.{target[: -len(IN_PROJ)]}.in_proj_weight"
        return f"{entry.container}.{first}.{target}.weight"
    return f"{next(iter(record.lct_ranks))}.weight"


def write_record(model: nn.Module, directory: str | Path, marker: str | None = None) -> Path:
    """Write ``directory/lors.json`` (format, conversion record, marker key) atomically."""
    directory = Path(directory)
    meta = get_record(model).to_dict()
    if marker is not None:
        meta["marker"] = marker
    tmp = directory / "lors.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, directory / "lors.json")
    return directory / "lors.json"


def _save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
    record = get_record(self)
    out = type(self).save_pretrained(self, save_directory, *args, state_dict=state_dict, **kwargs)
    if record is None or not (record.stacks or record.lct_ranks) or not kwargs.get("is_main_process", True):
        return out
    # transformers may rename keys on save (legacy checkpoint names) or shard the file; a converted model is
    # stored as one file under its own parameter names, plus the marker, so lors.load can replay it exactly.
    directory = Path(save_directory)
    for old in list(directory.glob("model*.safetensors")) + list(directory.glob("model.safetensors.index.json")):
        old.unlink()
    state = unique_tensors(self.state_dict() if state_dict is None else state_dict)
    marker = marker_key(record)
    state[marker] = torch.zeros(1)  # wrong shape on purpose: from_pretrained on the base class must fail
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    write_record(self, directory, marker)
    return out


def install_save_pretrained(model: nn.Module) -> None:
    """Give a converted Hugging Face model (anything with ``save_pretrained``) the safe ``save_pretrained``."""
    if callable(getattr(type(model), "save_pretrained", None)) and "save_pretrained" not in vars(model):
        model.save_pretrained = types.MethodType(_save_pretrained, model)
