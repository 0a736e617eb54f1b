"""Per-op cost formulas (sympy): each module owns the ops of one concern."""

from perfmodel.ops.base import LayerGroup, Op, OpClass, Peak, ProfilerCategory, Quantized, Role

__all__ = ["LayerGroup", "Op", "OpClass", "Peak", "ProfilerCategory", "Quantized", "Role"]
