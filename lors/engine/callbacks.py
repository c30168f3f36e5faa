"""Callbacks: what happens around the Trainer's loop, one hook per moment (Lightning's design).

The :class:`~lors.engine.trainer.Trainer` calls, in this order, ``on_fit_start``, then per
epoch ``on_epoch_start``, ``on_step_end`` after every optimizer step and ``on_epoch_end``
with the epoch's row, and ``on_fit_end``. ``extra_loss`` adds a term to the training loss and
``no_decay`` exempts parameters from weight decay when the optimizer is built. A callback
that replaces parameters calls ``trainer.request_optimizer_rebuild()``; it never swaps the
optimizer or the model wrapper itself. ``state_dict``/``load_state_dict`` travel in the
checkpoint under the callback's class name, so a resumed run continues exactly.

Shipped here: :class:`CsvLogger` (``log.csv``, and TensorBoard when installed). The LCT schedule's
callbacks live in :mod:`lors.engine.lct_schedule`.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import torch
from torch import nn


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer, epoch: int) -> None: ...
    def on_step_end(self, trainer, step: int) -> None: ...
    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None: ...
    def on_fit_end(self, trainer) -> None: ...

    def extra_loss(self, trainer) -> Optional[torch.Tensor]:
        return None

    def no_decay(self, model: nn.Module) -> set[int]:
        return set()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class CsvLogger(Callback):
    """One row per epoch in ``run_dir/log.csv`` (main process only); scalars mirrored to TensorBoard if
    it is installed."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "log.csv"
        self.tb = None

    def on_fit_start(self, trainer) -> None:
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.path.parent / "tb"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        if not trainer.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def on_fit_end(self, trainer) -> None:
        if self.tb is not None:
            self.tb.close()
