"""The training engine: one :class:`Trainer` loop, callbacks, checkpoints, distributed helpers.

It knows no model, data set or task: it receives them (see :mod:`lors.tasks`, :mod:`lors.models`).
"""
from .callbacks import Callback, CsvLogger
from .checkpoint import load_trained
from .config import TrainConfig
from .fsdp import fsdp_wrap
from .lct_schedule import FrobeniusDecay, LctSchedule, LctScheduleConfig, Reprojection
from .trainer import Trainer

__all__ = ["Callback", "CsvLogger", "FrobeniusDecay", "LctSchedule", "LctScheduleConfig", "Reprojection",
           "TrainConfig", "Trainer", "fsdp_wrap", "load_trained"]
