"""lors: fewer parameters for stacked layers via low-rank residual structure (LORS) and LCT.

Public API::

    lors.LorsLinearStack   static LORS: shared weight + per-layer low-rank residuals
    lors.AdaptiveLors      adaptive LORS: shared generator + per-layer generated low-rank residuals
    lors.LowRankLinear     LCT: factorised linear W = U @ V, SVD to/from dense
    lors.count_parameters  unique parameter count (shared tensors once)
    lors.convert           apply static LORS to the stacks of any model (LorsConfig)
    lors.lct               factorise Linear layers of any model into LowRankLinear
    lors.merge             new dense model from a converted one
    lors.save / lors.load  compact safetensors + JSON checkpoints of converted models
    lors.report            one-line summary + per-module parameter table
    lors.param_groups      optimizer groups with shared LORS weights at a lower lr (1/sqrt(N))
    lors.distill           train a compressed model to reproduce its teacher
"""
from .accounting import (adaptive_lors_params, count_parameters, dense_stack_params, format_table,
                         generator_stack_params, parameter_table, print_trainable_parameters, report,
                         static_lors_params)
from .convert import LorsConfig, convert, lct, lct_ranks, merge
from .nn import (AdaptiveLors, GeneratorStack, LinearStack, LorsLinearStack, LowRankLinear, StackLayer,
                 rank_for_epsilon)

from .distill import distill
from .optim import balance_shared_gradients, param_groups
from .serialization import load, save

__version__ = "0.1.0"

__all__ = ["AdaptiveLors", "GeneratorStack", "LinearStack", "LorsConfig", "LorsLinearStack", "LowRankLinear",
           "StackLayer", "adaptive_lors_params", "balance_shared_gradients", "convert", "count_parameters",
           "dense_stack_params", "distill", "format_table", "generator_stack_params", "lct", "lct_ranks", "load", "merge", "param_groups", "parameter_table",
           "print_trainable_parameters", "rank_for_epsilon", "report", "save", "static_lors_params"]
