"""Model-agnostic training engine: optimisation, checkpoints, logging, distributed helpers."""
