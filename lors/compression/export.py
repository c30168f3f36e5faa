"""A compressed model as a self-contained folder: :func:`save_pretrained` and :func:`from_pretrained`.

The folder needs no base model::

    config.json                 the Hugging Face config (architecture, sizes)
    generation_config.json      when the model has one
    tokenizer files             when a tokenizer is given
    lors_model.safetensors      every tensor of the compressed model (factors, embeddings, norms; tied tensors once)
    lors.json                   the conversion record (what was factorised, at which rank, in which storage) and
                                where the model came from: base name or path, GGUF file, sha256 of the base weights,
                                the CompressConfig, the lors and transformers versions (as PEFT's
                                ``base_model_name_or_path``)

:func:`from_pretrained` builds the architecture from ``config.json`` with empty (meta) weights, replays the record's
structure (no SVD, no base weights read) and assigns the saved tensors. The tensors are not in ``model.safetensors``
on purpose: the plain ``transformers`` ``from_pretrained`` then stops (no weights file) instead of loading the
dense architecture with random weights where the factors are.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..apply.hf import install_save_pretrained
from ..apply.linears import unique_tensors
from ..apply.record import ConversionRecord, get_record
from ..apply.serialization import replay
from ..errors import ConfigError

WEIGHTS = "lors_model.safetensors"
META = "lors.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _version() -> str:
    from .._version import __version__
    return __version__


def save_pretrained(model: nn.Module, folder: str | Path, tokenizer=None, config=None, source: Optional[dict] = None,
                    dtype: Optional[str] = None) -> Path:
    """Write ``model`` (a compressed Hugging Face model) to ``folder`` so that :func:`from_pretrained` rebuilds it
    alone. ``config``: the :class:`~lors.compression.CompressConfig` used (recorded); ``source``: where the base
    came from (:func:`lors.compression.pretrained.base_source`); ``dtype``: ``"float32"`` (default: as held),
    ``"bfloat16"`` or ``"float16"`` storage of the floating tensors. Returns the folder."""
    record = get_record(model)
    if record is None or not record.conversions:
        raise ValueError("save_pretrained writes compressed models; this one has no lors conversion record "
                         "(compress it with lors.compress first)")
    if not hasattr(model, "config") or not hasattr(model.config, "to_json_string"):
        raise ValueError("save_pretrained needs a Hugging Face model (with .config); use lors.save for other models")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    import transformers

    config_copy = model.config.__class__.from_dict(model.config.to_dict())
    config_copy.architectures = [type(model).__name__]
    config_copy.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    tensors = unique_tensors(model.state_dict())
    if dtype is not None:
        tensors = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "lors": _version()})
    os.replace(tmp, folder / WEIGHTS)
    meta = {**record.to_dict(), "architecture": type(model).__name__,
            "lors_version": _version(), "transformers_version": transformers.__version__,
            "dtype": dtype or str(next(model.parameters()).dtype).removeprefix("torch."),
            "source": source or {}, "compress_config": config.to_dict() if hasattr(config, "to_dict") else config}
    (folder / (META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(folder / (META + ".tmp"), folder / META)
    return folder


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), each group in order."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retie(model: nn.Module, groups: list[list[str]], tensors: dict) -> None:
    """After loading with ``assign``, point every name of a tied group at the one tensor that was saved."""
    for names in groups:
        saved = next((n for n in names if n in tensors), None)
        if saved is None:
            continue
        param = model.get_parameter(saved)
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, param)


def read_meta(folder: str | Path) -> dict:
    """The folder's ``lors.json`` (with a one-line error for a folder that is not a compressed model)."""
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a lors compressed-model folder (no {META}); make one with "
                                "lors compress --out or lors.save_pretrained")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged") from None
    if "lors_version" not in meta:
        raise ValueError(f"{path} was written by lors.save (it needs its base model): load it with "
                         "lors.load(<the unconverted model>, folder)")
    return meta


def from_pretrained(folder: str | Path, dtype: Optional[str] = None, device: str = "cpu") -> nn.Module:
    """The compressed model saved in ``folder`` by :func:`save_pretrained`, rebuilt from the folder alone (a
    ``transformers`` model in eval mode, ready to ``generate``). ``dtype``: cast the floating tensors (default:
    as stored). A folder from another lors version, or whose record does not fit its config, fails with one line."""
    import transformers
    from accelerate import init_empty_weights

    folder = Path(folder)
    meta = read_meta(folder)
    if meta["lors_version"] != _version():
        raise ValueError(f"{folder} was written by lors {meta['lors_version']}; this is lors {_version()}: "
                         "compress the model again with this version")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    arch = meta["architecture"]
    if (config.architectures or [arch])[0] != arch or not hasattr(transformers, arch):
        raise ValueError(f"{folder}: lors.json is for architecture {arch}, config.json says "
                         f"{config.architectures}; the folder was altered or mixed")
    with init_empty_weights():  # parameters on the meta device, buffers (rotary tables) real
        model = getattr(transformers, arch)(config)
    try:
        replay(model, ConversionRecord.from_dict(meta, source=str(folder / META)), source=str(folder))
    except ValueError as e:
        raise ValueError(f"{folder}: the record does not fit the architecture in config.json ({e})") from None
    tensors = load_file(str(folder / WEIGHTS), device=device)
    if dtype is not None:
        tensors = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # not done on meta weights at construction
    tied = _tied_groups(model)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    _retie(model, tied, tensors)
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if empty or unexpected:
        raise ValueError(f"{folder}/{WEIGHTS} does not fit the rebuilt model: no tensor for {empty[:6]}, "
                         f"unexpected {sorted(unexpected)[:6]}")
    model.to(device)
    if (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    install_save_pretrained(model)
    return model.eval()
