"""Applying LORS and LCT to any model (PEFT's "tuners"): configs, discovery, calibration, conversion,
merging, the conversion record and checkpoints of converted models."""
from .calibration import input_moments
from .config import LctConfig, LorsConfig
from .lct import lct, lct_ranks
from .lors import convert
from .merge import merge
from .record import ConversionRecord
from .serialization import load, save

__all__ = ["ConversionRecord", "LctConfig", "LorsConfig", "convert", "input_moments", "lct", "lct_ranks", "load",
           "merge", "save"]
