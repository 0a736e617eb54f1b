"""Token embedding and the language-model head (last-token logits only, as engines compute)."""

from __future__ import annotations

from perfmodel.minmax import Min
from perfmodel.ops.base import Op, OpClass
from perfmodel.symbols import B, H, T, V, b_a, b_w, tp


def embedding() -> Op:
    """Gather of T rows of the V×H table (at most V distinct rows are read)."""
    rows = Min(T, V)
    return Op(
        name="embed",
        op_class=OpClass.ELEMENTWISE,
        weight_bytes=rows * H * b_w,
        act_bytes=T * H * b_a,
        params=V * H,
        stored_bytes=V * H * b_w,
        efficiency_size=T * H,
    )


def lm_head(tied: bool, bias: bool) -> Op:
    """Logits of the last token of each of the B sequences: a B×H by H×V GEMM.

    A tied head shares the embedding's parameters (counted there); a bias adds V.
    """
    params = (0 if tied else V * H) + (V if bias else 0)
    return Op(
        name="lm_head",
        op_class=OpClass.GEMM,
        flops=2 * B * H * V / tp,
        weight_bytes=H * V * b_w / tp,
        act_bytes=B * (H + V / tp) * b_a,
        params=params,
        stored_bytes=params * b_w / tp,
        efficiency_size=B,
    )
