"""The :class:`Op`: one kernel-level step of a forward pass and its cost, as sympy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sympy as sp

#: Efficiency classes: each has its own η curves in an engine profile.
OpClass = Literal["gemm", "grouped_gemm", "attention", "attention_masked", "elementwise", "copy",
                  "comm"]

ZERO = sp.Integer(0)


@dataclass(frozen=True)
class Op:
    """Cost of one op for one forward pass, per GPU, in the symbols of :mod:`perfmodel.symbols`.

    ``flops`` counts matrix (tensor-core) FLOPs only, 2 per multiply-add; elementwise work is
    costed by its bytes. Bytes are HBM traffic, split by what is moved: ``weight_bytes``
    (parameters read), ``act_bytes`` (activations read + written) and ``kv_bytes`` (KV cache
    read + written). ``comm_bytes`` is what one GPU sends over the scale-up link. ``params``
    is the parameter count the op holds in one layer of the whole model (unsharded).
    ``size`` is the op-size variable its efficiency curve is a function of (GEMM rows, tokens
    per expert, ...). ``kernels`` counts kernel launches, for fixed per-kernel latency;
    ``fixed_latency`` is any other fixed time, s (collective steps). ``stored_bytes`` is the
    parameter memory the op keeps on one GPU and ``kv_bytes_per_token`` the KV-cache bytes it
    keeps per cached token per sequence on one GPU.
    """

    name: str
    op_class: OpClass
    flops: sp.Expr = ZERO
    weight_bytes: sp.Expr = ZERO
    act_bytes: sp.Expr = ZERO
    kv_bytes: sp.Expr = ZERO
    comm_bytes: sp.Expr = ZERO
    params: sp.Expr = ZERO
    size: sp.Expr = field(default_factory=lambda: sp.Integer(1))
    kernels: int = 1
    fixed_latency: sp.Expr = ZERO
    stored_bytes: sp.Expr = ZERO
    kv_bytes_per_token: sp.Expr = ZERO

    @property
    def bytes(self) -> sp.Expr:
        """All HBM bytes moved: weights + activations + KV cache."""
        return self.weight_bytes + self.act_bytes + self.kv_bytes

    def quantity(self, name: str) -> sp.Expr:
        """One cost quantity by name: flops, bytes, weight_bytes, act_bytes, kv_bytes, comm, params."""
        attr = {"comm": "comm_bytes"}.get(name, name)
        if attr == "bytes":
            return self.bytes
        if attr not in {"flops", "weight_bytes", "act_bytes", "kv_bytes", "comm_bytes", "params"}:
            raise KeyError(name)
        return getattr(self, attr)


@dataclass(frozen=True)
class LayerGroup:
    """Identical layers: ``count`` copies (an expression) of the same list of ops."""

    name: str
    count: sp.Expr
    ops: tuple[Op, ...]
