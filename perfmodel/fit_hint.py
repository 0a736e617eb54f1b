"""What would make a workload that does not fit in memory fit: more GPUs, or fp8 weights.

:func:`ways_to_fit` predicts a workload whose ``fits_in_memory`` is False again at twice, four
times, … its tensor-parallel size (its dtype and quantization kept, up to :data:`MAX_TP` GPUs per
layout), and with fp8 W8A8 weights at its own layout, else at the smallest larger one below the
first that fits unquantized; it names the first of each that fits, with the memory it needs per
GPU. A layout the model cannot take (attention heads that ``tp`` does not divide) is skipped.
"""

from __future__ import annotations

from typing import Any

from perfmodel.errors import PerfModelError

#: The largest tensor-parallel size tried (one host's GPUs).
MAX_TP = 8
#: Weights that fp8 would shrink (and a quantization of none: already quantized weights are kept).
WIDE_DTYPES = ("fp32", "bf16", "fp16")
GIB = 2**30


def ways_to_fit(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """The changes to :func:`perfmodel.prediction.predict`'s ``arguments`` (a workload that does
    not fit) that make it fit, each as its command-line flags and the memory it needs per GPU
    (bytes): ``[{"flags": "--tp 2", "memory_bytes": …}, {"flags": "--quant fp8", …}]``; empty
    where none does."""
    from perfmodel.prediction import predict

    def fits(**change: Any):
        try:
            prediction = predict(**{**arguments, **change})
        except PerfModelError:
            return None
        return prediction.metrics["memory_bytes"] if prediction.metrics["fits_in_memory"] else None

    others = int(arguments.get("pp", 1)) * int(arguments.get("dp", 1))  # the layout's GPUs beside tp's
    sizes = [int(arguments.get("tp", 1))]
    while sizes[-1] * 2 * others <= MAX_TP:
        sizes.append(sizes[-1] * 2)
    wider = next(((tp, need) for tp in sizes[1:] if (need := fits(tp=tp)) is not None), None)
    found = [] if wider is None else [{"flags": f"--tp {wider[0]}", "memory_bytes": wider[1]}]
    if arguments.get("quant") is None and arguments.get("dtype", "bf16") in WIDE_DTYPES:
        # fp8 at the layout given, else at the smallest larger one below the first unquantized fit
        tried = sizes if wider is None else sizes[:sizes.index(wider[0])]
        fp8 = next(((tp, need) for tp in tried if (need := fits(tp=tp, quant="fp8")) is not None), None)
        if fp8 is not None:
            flags = ("" if fp8[0] == sizes[0] else f"--tp {fp8[0]} ") + "--quant fp8"
            found.append({"flags": flags, "memory_bytes": fp8[1]})
    return found


def hint_text(ways: list[dict[str, Any]]) -> str:
    """:func:`ways_to_fit`'s answer as the end of a warning: ``; it fits with --tp 2 (43.6 GiB
    per GPU) or --quant fp8 (43.8 GiB per GPU)``, or ``; no --tp up to 8 GPUs fits it``."""
    if not ways:
        return f"; no --tp up to {MAX_TP} GPUs fits it"
    return "; it fits with " + " or ".join(f"{w['flags']} ({w['memory_bytes'] / GIB:.1f} GiB per GPU)"
                                           for w in ways)
