"""Dummy weights for a checkpoint-quantized vLLM engine: random packed MXFP4 and GPTQ codes,
and fp8 weights that are not mostly zeros.

vLLM's dummy loader draws every floating-point parameter uniformly in ±1e-3 and leaves integer
ones as ``torch.empty`` left them (``initialize_single_dummy_weight``). A model stored in MXFP4
(gpt-oss: the routed experts' weights as packed 4-bit E2M1 codes, two per ``uint8``, with one
8-bit E8M0 exponent per 32 weights, also ``uint8``) would then be timed on whatever memory held:
zeros, or exponents up to 2^128 and the E8M0 NaN, whose infinities reach the router's logits and
change which experts the tokens pick. :func:`patch_dummy_loader` makes the loader also fill the
integer parameters: every packed byte uniform in [0, 256) (each nibble a random E2M1 code,
magnitudes 0–6) and every scale uniform in :data:`SCALE_EXPONENT_BYTES` (2^-14 to 2^-12), so a
weight is at most 6·2^-12 ≈ 1.5e-3, the size of the bf16 dummy weights, and never inf or NaN.

A GPTQ model (4-bit integer codes packed eight to an ``int32``: ``qweight``, and ``qzeros``)
gets every byte of those tensors uniform in [0, 256), so each nibble is a random code 0–15; its
scales are floating-point, drawn by vLLM in ±1e-3, so a weight (code − 8)·scale stays under 1e-2.
Its ``g_idx`` (the group of each input row, used only with act-order, which the measured
checkpoints do not set) is left alone.

An fp8 checkpoint's weights (``float8_e4m3fn``) are drawn by vLLM in ±1e-3 too, below e4m3's
smallest subnormal magnitude, 2^-9: nearly every weight would be zero. They are drawn uniform in
:data:`FP8_WEIGHT_RANGE` instead, every e4m3 magnitude up to 1, and the scales beside them stay
vLLM's (fp32 in ±1e-3), so that a weight times its scale is the size of the bf16 dummy weights.
"""

from __future__ import annotations

from typing import Any

#: E8M0 scale bytes drawn for the dummy weights, [low, high): 2^(byte − 127), i.e. 2^-14 … 2^-12.
SCALE_EXPONENT_BYTES = (113, 116)
#: Parameter-name suffix of the scales among the integer parameters (``w13_weight_scale``).
SCALE_SUFFIX = "_scale"
#: Name suffixes of the ``int32`` parameters that hold packed 4-bit codes (GPTQ's ``qweight``,
#: ``w13_qweight``, and its zero points ``qzeros``).
PACKED_INT32_SUFFIXES = ("qweight", "qzeros")
#: Range of the dummy fp8 weights, drawn uniform in fp16 and rounded to e4m3.
FP8_WEIGHT_RANGE = (-1.0, 1.0)
#: The worker extension (``worker_extension_cls``) that patches the loader in an engine core's
#: own process (:mod:`perfmodel.measuring.vllm_dummy_worker`), and its method, for ``collective_rpc``,
#: that says how many quantized tensors were filled there.
FILL_EXTENSION = "perfmodel.measuring.vllm_dummy_worker.DummyFillExtension"
FILLED_METHOD = "perfmodel_dummy_filled"


def fill_quantized_parameters(module: Any) -> int:
    """Fill ``module``'s own quantized parameters (not its children's) in place: ``uint8`` scales
    (names ending in :data:`SCALE_SUFFIX`) uniform over :data:`SCALE_EXPONENT_BYTES`, other
    ``uint8`` (packed MXFP4 codes) and the ``int32`` packed codes named by
    :data:`PACKED_INT32_SUFFIXES` with every byte uniform over [0, 256), ``float8_e4m3fn``
    weights uniform over :data:`FP8_WEIGHT_RANGE`. Returns how many tensors were filled."""
    import torch

    filled = 0
    for name, param in module.named_parameters(recurse=False):
        if param.dtype == torch.float8_e4m3fn:
            with torch.no_grad():
                param.data.copy_(torch.empty(param.shape, dtype=torch.float16, device=param.device)
                                 .uniform_(*FP8_WEIGHT_RANGE).to(param.dtype))
            filled += 1
            continue
        if param.dtype == torch.uint8:
            low, high = SCALE_EXPONENT_BYTES if name.endswith(SCALE_SUFFIX) else (0, 256)
            target = param.data
        elif param.dtype == torch.int32 and name.endswith(PACKED_INT32_SUFFIXES):
            low, high = 0, 256
            target = param.data.view(torch.uint8)
        else:
            continue
        with torch.no_grad():
            target.random_(low, high)
        filled += 1
    return filled


#: Quantized tensors the patched loader has filled in this process (:func:`filled_tensors`).
_FILLED = [0]


def filled_tensors(reset: bool = False) -> int:
    """How many quantized tensors :func:`patch_dummy_loader`'s loader has filled in this process
    (``reset``: start counting again from zero, before an engine loads)."""
    if reset:
        _FILLED[0] = 0
    return _FILLED[0]


def checked_fill_count(counts: Any) -> int:
    """The filled-tensor count of the (first) worker, from ``collective_rpc``'s list of each
    worker's :func:`filled_tensors` (or one count); raises where a worker filled none: its
    weights would be timed as vLLM left them."""
    counts = [int(n) for n in (counts if isinstance(counts, (list, tuple)) else [counts])]
    if not counts or min(counts) <= 0:
        raise RuntimeError(f"the dummy loader filled no quantized tensor ({counts}): "
                           "the weights would be timed as vLLM left them")
    return counts[0]


def patch_dummy_loader() -> None:
    """Make vLLM's dummy loader fill each layer's quantized parameters after its own
    initialization (:func:`fill_quantized_parameters`); in this process, idempotent. The engine
    loads in this process where the runners set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (offline);
    an engine core of its own process (the serving engine) patches its loader through the worker
    extension :class:`perfmodel.measuring.vllm_dummy_worker.DummyFillExtension`."""
    from vllm.model_executor.model_loader import dummy_loader

    original = dummy_loader.initialize_dummy_weights
    if getattr(original, "_perfmodel_fills_quantized", False):
        return

    def initialize_dummy_weights(layer, *args, **kwargs):
        original(layer, *args, **kwargs)
        _FILLED[0] += fill_quantized_parameters(layer)

    initialize_dummy_weights._perfmodel_fills_quantized = True  # type: ignore[attr-defined]
    dummy_loader.initialize_dummy_weights = initialize_dummy_weights
