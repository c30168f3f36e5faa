"""The math core: static LORS, adaptive LORS and LCT low-rank layers."""
from .adaptive import AdaptiveLors, GeneratorStack
from .lowrank import LowRankLinear, rank_for_epsilon, relative_error
from .static import LinearStack, LorsLinearStack, StackLayer

__all__ = ["AdaptiveLors", "GeneratorStack", "LinearStack", "LorsLinearStack", "LowRankLinear",
           "StackLayer", "rank_for_epsilon", "relative_error"]
