"""GEO precision: ``PredictiveScalingPrecision``, a Lightning precision plugin with a predicted fp16 loss scale."""

from lightning_geo.precision.block_scaling import BlockScaling, find_block_stacks
from lightning_geo.precision.fp32_modules import ForwardOverflowProbe, is_promoted, promote_to_fp32
from lightning_geo.precision.plugin import LossScaleCollapseError, PredictiveScalingPrecision
from lightning_geo.precision.scale_rule import FP16_MAX, AmaxPredictor, power_of_two_scale
from lightning_geo.precision.underflow import UnderflowProbe, summarize_underflow

__all__ = [
    "FP16_MAX",
    "AmaxPredictor",
    "BlockScaling",
    "ForwardOverflowProbe",
    "LossScaleCollapseError",
    "PredictiveScalingPrecision",
    "UnderflowProbe",
    "find_block_stacks",
    "is_promoted",
    "power_of_two_scale",
    "promote_to_fp32",
    "summarize_underflow",
]
