"""Compact save/load of converted models: safetensors (each shared tensor once) + JSON.

``save(model, dir)`` writes ``dir/model.safetensors`` (the converted model's
state_dict: a LORS stack stores its shared weight once, so the file shrinks with
the parameter count) and ``dir/lors.json`` (the :class:`~lors.apply.record.ConversionRecord`:
every conversion with its own options and ranks, and a fingerprint of the base architecture). ``load(base_model, dir)`` replays the
conversion on an unconverted copy of the same architecture and loads the tensors.

``dir`` may also be a Hugging Face model folder or ``transformers.Trainer``
checkpoint written by a converted model's ``save_pretrained`` (see :mod:`lors.hf`).
Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from .config import LorsConfig
from .hf import install_save_pretrained, write_record
from .heads import heads_plan
from .lct import factorise_plan, pivot_plan
from .linears import tied_parameter_ids
from .modular import neurons_plan
from .lors import apply_freezing, rebuild_stack
from .record import ConversionRecord, fingerprint, get_record

WEIGHTS = "model.safetensors"


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a converted model to ``directory``; returns the directory."""
    if get_record(model) is None:
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
    if "lors_version" in meta and not (directory / WEIGHTS).is_file():
        raise ValueError(f"{directory} is a self-contained compressed model (lors.save_pretrained); load it with "
                         "lors.from_pretrained(folder), no base model needed")
    record = ConversionRecord.from_dict(meta, source=str(meta_path))
    replay(base_model, record, source=str(directory))
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
    install_save_pretrained(base_model)
    return base_model


def replay(base_model: nn.Module, record: ConversionRecord, source: str = "the checkpoint") -> nn.Module:
    """Redo every conversion of ``record`` on the unconverted ``base_model``, in order (structure and
    freezing; the values come from the saved tensors loaded afterwards). Returns ``base_model``."""
    found = fingerprint(base_model)
    if found != record.base_fingerprint:
        raise ValueError(f"{source} was saved from a different base model (architecture fingerprint "
                         f"{record.base_fingerprint}, this model {found}); build the same architecture, "
                         "unconverted, and load onto it")
    for conversion in record.conversions:
        if conversion.kind == "lors":
            for entry in conversion.stacks:
                rebuild_stack(base_model, entry)
            if conversion.config is not None:  # legacy lors-1 records of lct-only models have none
                apply_freezing(base_model, LorsConfig.from_dict(conversion.config))
        elif conversion.kind == "pivot":
            pivot_plan(base_model, conversion.ranks)
        elif conversion.kind == "neurons":
            neurons_plan(base_model, conversion.ranks, conversion.config["readers"])
        elif conversion.kind == "heads":
            heads_plan(base_model, conversion.config["layers"])
        elif conversion.ranks:
            factorise_plan(base_model, conversion.ranks)
    base_model.lors_conversion = record
    return base_model
