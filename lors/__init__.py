"""lors: fewer parameters for stacked layers via low-rank residual structure (LORS) and LCT.

Public API::

    lors.LorsLinearStack   static LORS: shared weight + per-layer low-rank residuals
    lors.AdaptiveLors      adaptive LORS: shared generator + per-layer generated low-rank residuals
    lors.LowRankLinear     LCT: factorised linear W = U @ V, SVD to/from dense
    lors.BasisSharedStack  basis sharing: one output basis for N layers, W_i = U @ A_i
    lors.SharedStack       the base class declaring a stack's shared and private tensors
    lors.convert           apply static LORS to the stacks of any model (LorsConfig)
    lors.lct               factorise Linear layers of any model into LowRankLinear (LctConfig)
    lors.merge             new dense model from a converted one
    lors.save / lors.load  compact safetensors + JSON checkpoints of converted models
    lors.ConversionRecord  what the conversions of a model did, one entry per call
    lors.count_parameters  unique parameter count (shared tensors once); lors.report: per-module table
    lors.cache_weights     inference: reuse each LORS layer's materialised weight until a parameter changes
    lors.param_groups      optimizer groups with shared LORS weights at a lower lr (1/sqrt(N))
    lors.Trainer           the training loop (tasks, callbacks, checkpoints, resume, DDP or FSDP)
    lors.fsdp_wrap         shard a model with FSDP2, shared LORS tensors kept in one unit with all their layers
    lors.distill           train a compressed model to reproduce its teacher (a task on the Trainer)
    lors.compress          compress a pretrained model (CompressConfig: the best measured recipe by default)
    lors.save_pretrained   a compressed model as a self-contained folder; lors.from_pretrained rebuilds it

Layers: ``lors.nn`` (maths), ``lors.apply`` (applying LORS/LCT to any model), ``lors.engine``
(Trainer), ``lors.tasks``, ``lors.models``, ``lors.data``, ``lors.compression`` (compressing pretrained models), ``lors.cli`` (applications).
"""
from .accounting import (adaptive_lors_params, count_parameters, dense_stack_params, format_table,
                         generator_stack_params, parameter_table, print_trainable_parameters, report,
                         static_lors_params)
from ._version import __version__
from .compression import CompressConfig, CompressReport, compress, from_pretrained, save_pretrained
from .apply import ConversionRecord, LctConfig, LorsConfig, convert, lct, lct_ranks, load, merge, save
from .engine import TrainConfig, Trainer, fsdp_wrap
from .nn import (AdaptiveLors, BasisSharedStack, GeneratorStack, LinearStack, LorsLinearStack, LowRankLinear, SharedStack,
                 StackLayer, cache_weights, rank_for_epsilon)
from .optim import balance_shared_gradients, param_groups
from .tasks.distill import distill


__all__ = ["AdaptiveLors", "BasisSharedStack", "CompressConfig", "CompressReport", "compress", "from_pretrained",
           "save_pretrained", "ConversionRecord", "GeneratorStack", "LctConfig", "LinearStack", "LorsConfig",
           "LorsLinearStack", "LowRankLinear", "SharedStack", "StackLayer", "TrainConfig", "Trainer",
           "adaptive_lors_params", "balance_shared_gradients", "cache_weights", "convert", "count_parameters", "dense_stack_params",
           "distill", "format_table", "fsdp_wrap", "generator_stack_params", "lct", "lct_ranks", "load", "merge", "param_groups",
           "parameter_table", "print_trainable_parameters", "rank_for_epsilon", "report", "save",
           "static_lors_params"]
