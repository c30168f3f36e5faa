"""lors: fewer parameters for stacked layers via low-rank residual structure (LORS) and LCT.

Public API::

    lors.LorsLinearStack   static LORS: shared weight + per-layer low-rank residuals
    lors.AdaptiveLors      adaptive LORS: shared generator + per-layer generated low-rank residuals
    lors.LowRankLinear     LCT: factorised linear W = U @ V, SVD to/from dense
    lors.count_parameters  unique parameter count (shared tensors once)
"""
from .accounting import (adaptive_lors_params, count_parameters, dense_stack_params, format_table,
                         generator_stack_params, parameter_table, report, static_lors_params)
from .nn import (AdaptiveLors, GeneratorStack, LinearStack, LorsLinearStack, LowRankLinear, StackLayer,
                 rank_for_epsilon)

__version__ = "0.1.0"

__all__ = ["AdaptiveLors", "GeneratorStack", "LinearStack", "LorsLinearStack", "LowRankLinear", "StackLayer",
           "adaptive_lors_params", "count_parameters", "dense_stack_params", "format_table",
           "generator_stack_params", "parameter_table", "rank_for_epsilon", "report", "static_lors_params"]
