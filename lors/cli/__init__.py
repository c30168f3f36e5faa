"""The applications on top of the library: the ``lors`` command line, YAML configs, experiment builders,
the demo, ``lors compress`` and the paper's closed-form counts."""
from .main import main

__all__ = ["main"]
