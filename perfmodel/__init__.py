"""perfmodel: a symbolic, calibrated performance model of Mixture-of-Experts LLM inference.

Python API::

    from perfmodel import predict, sweep
    p = predict("mixtral-8x7b", gpu="h200", batch=16, input_len=2048, output_len=2048)
    p.metrics["ttft_s"], p.metrics["throughput_tok_s"]
    df = sweep("mixtral-8x7b", {"batch": [1, 16, 64], "top_k": [1, 2, 4, 8]})

Bad arguments raise :class:`InputError` (``from perfmodel import InputError``) with a one-line message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict", "sweep", "load_model", "load_gpu", "InputError", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: keep `import perfmodel` cheap
    if name == "__version__":  # the installed distribution's version (pyproject.toml)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("perfmodel")
        except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
            return "unknown"
    if name == "predict":
        from perfmodel.prediction import predict

        return predict
    if name == "sweep":
        from perfmodel.sweeps import sweep

        return sweep
    if name == "load_model":
        from perfmodel.specs.model import load_model

        return load_model
    if name == "load_gpu":
        from perfmodel.specs.hardware import load_gpu

        return load_gpu
    if name == "InputError":
        from perfmodel.errors import InputError

        return InputError
    raise AttributeError(name)
