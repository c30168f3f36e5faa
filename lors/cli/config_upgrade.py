"""Config keys that changed between versions of the layout: refused with a hint in a config file, upgraded in the
config a checkpoint was saved with (so ``lors eval`` and ``lors generate`` read old runs)."""
from __future__ import annotations

import copy

from ..errors import ConfigError

# Keys that moved when the train section was split (lors 0.2): the engine's, the LCT schedule's, the loss's.
MOVED = {**{f"train.lct_{k}": f"lct.{k}" for k in ("epsilon", "rank", "warmup_epochs", "targets", "ramp_epochs",
                                                   "reproject_every", "reproject_epsilon", "frobenius_decay")},
         "train.lct_lr_scale": "train.factor_lr_scale", "train.label_smoothing": "loss.label_smoothing",
         "train.mixup": "loss.mixup", "train.cutmix": "loss.cutmix"}


# Keys whose meaning changed (lors 0.3): refused in a config file, dropped from a checkpoint's saved config.
REPLACED = {"data.max_eval_chunks": "evaluation scores the whole split; cap it with data.max_eval_tokens (predicted "
                                    "tokens, evenly spread) if needed"}


def refuse_old_key(path: str) -> None:
    """Raise a ConfigError naming the new key when ``path`` (``section.key``) moved or was replaced."""
    if path in REPLACED:
        raise ConfigError(f"config key '{path}' was replaced: {REPLACED[path]}")
    if path in MOVED:
        raise ConfigError(f"config key '{path}' is now '{MOVED[path]}' (the train section was split into train, lct "
                          "and loss); rename it")


def upgrade_saved_config(data: dict) -> dict:
    """A config saved in a checkpoint by an older lors, in today's layout: moved keys renamed (``MOVED``), replaced
    ones dropped (``REPLACED``), and a run from before ``data.split_seed`` split by its training seed, as it was."""
    data = copy.deepcopy(data)
    section = data.get("data")
    task = data.get("task", "classification")
    if isinstance(section, dict) and "split_seed" not in section and (task == "lm" or (
            task == "classification" and section.get("dataset", "digits") in ("digits", "mnist"))):
        section["split_seed"] = (data.get("train") or {}).get("seed", 0)
    for old in REPLACED:  # an old run's cap no longer applies: its checkpoint is scored like a new one
        section, key = old.split(".")
        (data.get(section) or {}).pop(key, None)
    if data.get("task") == "lm" and (data.get("data") or {}).get("tokenizer", "bytes") == "bytes":
        (data.get("data") or {}).pop("vocab_size", None)  # saved by older runs whatever the tokenizer
    train = data.get("train") or {}
    for old, new in MOVED.items():
        key = old.split(".", 1)[1]
        if key in train:
            value = train.pop(key)
            section, name = new.split(".")
            if section != "loss" or data.get("task", "classification") == "classification":
                data.setdefault(section, {})[name] = value
    return data
