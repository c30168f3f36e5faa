"""Checkpoints as safetensors (tensors) + JSON (config and training state), written atomically.

A checkpoint named ``last`` in ``run_dir`` is two files:

* ``last-<epoch>.safetensors``: ``model.<key>`` for the model's state_dict, ``optim.<i>.<name>``
  for the optimizer state, ``rng.torch`` for the torch RNG state;
* ``last.json``: the run's config, epoch, step, metric history, optimizer hyper-parameters,
  the model's conversion record (how to rebuild converted layers, e.g. LCT factors made
  during training), each callback's state and the name of the tensors file.

The tensors file is written under a fresh name first and ``last.json`` is replaced
atomically afterwards, so a kill at any moment leaves a complete, consistent pair.
Loading never unpickles anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..apply.lct import factorise_plan
from ..apply.linears import unique_tensors
from ..apply.record import ConversionRecord, get_record
from ..apply.serialization import replay


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimizer state_dict into flat tensors and JSON-able param-group settings."""
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_flat(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, meta: dict[str, Any],
                    optimizer: Optional[torch.optim.Optimizer] = None, name: str = "last",
                    model_state: Optional[dict] = None, optimizer_state: Optional[dict] = None) -> Path:
    """Write ``name.json`` + its tensors file into ``run_dir``; returns the JSON path.

    ``model_state`` / ``optimizer_state`` replace ``model.state_dict()`` / ``optimizer.state_dict()`` (a sharded
    run passes the gathered, unsharded states of :mod:`lors.engine.fsdp`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if model_state is None else model_state
    tensors = {f"model.{k}": v for k, v in unique_tensors(state).items()}  # a tied tensor once
    meta = dict(meta)
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    if optimizer_state is not None:
        opt_tensors, meta["optimizer_groups"] = optimizer_to_flat(optimizer_state)
        tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors_name = f"{name}-{meta.get('epoch', 0):04d}.safetensors"
    tmp = run_dir / (tensors_name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, run_dir / tensors_name)
    meta["tensors_file"] = tensors_name
    json_path = run_dir / f"{name}.json"
    old = json.loads(json_path.read_text()).get("tensors_file") if json_path.is_file() else None
    _atomic_write_text(json_path, json.dumps(meta, indent=2))
    if old and old != tensors_name and (run_dir / old).is_file():
        (run_dir / old).unlink()
    return json_path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint given its JSON path or its run directory: (meta, tensors)."""
    path, meta = read_meta(path)
    tensors_path = path.parent / meta["tensors_file"]
    if not tensors_path.is_file():
        raise FileNotFoundError(f"checkpoint {path} refers to missing tensors file {tensors_path}")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint tensors {tensors_path} ({e}); the file is truncated or damaged: "
                         "restore it or train again") from None
    return meta, tensors


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """A checkpoint's JSON (config, epoch, history; no tensors), given the file or its run directory:
    (path of the JSON file, meta)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.json"
    if path.suffix == ".safetensors":
        raise ValueError(f"give the checkpoint's .json file (or its directory), not {path.name}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {path} is not valid JSON ({e}); the file is damaged: restore it or "
                         "train again") from None
    if not isinstance(meta, dict) or "tensors_file" not in meta:
        raise ValueError(f"{path} is not a lors checkpoint (no 'tensors_file' entry)")
    return path, meta


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``model.*`` tensors strictly; a mismatch names the missing and unexpected keys."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    stored = {own[k].data_ptr() for k in state if k in own}
    missing = sorted(k for k in set(own) - set(state) if own[k].data_ptr() not in stored)  # tied names: loaded once
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        example = (f"e.g. '{mismatched[0][0]}' is {mismatched[0][1]} in the checkpoint but {mismatched[0][2]} here"
                   if mismatched else f"e.g. missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise ValueError(f"checkpoint does not fit this model ({len(mismatched)} shape mismatches, {len(missing)} "
                         f"missing and {len(unexpected)} unexpected keys; {example})")
    model.load_state_dict(state, strict=False)


def checkpoint_meta(model: nn.Module, run_config: Optional[dict], epoch: int, step: int, history: list,
                    world_size: int, callbacks: dict) -> dict:
    """The JSON part of a training checkpoint (see the module docstring)."""
    record = get_record(model)
    return {"config": run_config, "epoch": epoch, "step": step, "history": history,
            "conversion": None if record is None else record.to_dict(), "callbacks": callbacks,
            "world_size": world_size}


def restore_model(model: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``model`` the checkpoint's structure and weights.

    An unconverted model (fresh from its factory) gets the recorded conversions replayed first (e.g.
    LCT factors made by the schedule); a model that is already converted must carry the same record.
    """
    saved, current = meta.get("conversion"), get_record(model)
    if saved is not None and current is None:
        replay(model, ConversionRecord.from_dict(saved, "checkpoint record"), source="the checkpoint")
    elif saved is not None and current.to_dict() != saved:
        raise ValueError("the checkpoint was written for a model converted differently; convert the model exactly "
                         "as in the interrupted run (same options, same order) before resuming")
    elif saved is None and meta.get("lct_ranks") and current is None:  # written before conversion records
        factorise_plan(model, meta["lct_ranks"])
    load_model_state(model, tensors)


def load_trained(checkpoint: str | Path, build_model: Callable[[], nn.Module]) -> tuple[nn.Module, dict]:
    """A trained model from a checkpoint (JSON path or run directory): ``(model, meta)``."""
    meta, tensors = read_checkpoint(checkpoint)
    model = build_model()
    restore_model(model, meta, tensors)
    return model, meta
