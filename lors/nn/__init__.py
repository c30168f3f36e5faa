"""The maths core: static LORS, adaptive LORS and LCT low-rank layers. Knows no model, config or training."""
from .adaptive import AdaptiveLors, GeneratorStack
from .basis import BasisSharedStack
from .lowrank import LowRankLinear
from .pivoted import PivotedLowRankLinear
from .spectral import rank_for_epsilon, relative_error
from .stack import SharedStack
from .static import LinearStack, LorsLinearStack, StackLayer, cache_weights

__all__ = ["AdaptiveLors", "BasisSharedStack", "GeneratorStack", "LinearStack", "LorsLinearStack", "LowRankLinear", "PivotedLowRankLinear",
           "SharedStack",
           "StackLayer", "cache_weights", "rank_for_epsilon", "relative_error"]
