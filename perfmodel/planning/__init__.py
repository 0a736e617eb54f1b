"""Capacity planning: serving a request rate under latency targets at the lowest cost.

``perfmodel plan`` searches GPU types, counts, TP/EP/PP layouts, dtypes, engine limits and
prefill/decode disaggregation; :func:`predict_serving` gives the serving latencies of one
configuration (for comparison with measured serving runs). See :mod:`.search`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict_serving"]


def __getattr__(name: str) -> Any:  # lazy: keep `import perfmodel.planning` cheap
    if name == "predict_serving":
        from perfmodel.planning.predict import predict_serving

        return predict_serving
    raise AttributeError(name)
