"""Per-op cost formulas (sympy): each module owns the ops of one concern."""

from perfmodel.ops.base import LayerGroup, Op, OpClass

__all__ = ["LayerGroup", "Op", "OpClass"]
