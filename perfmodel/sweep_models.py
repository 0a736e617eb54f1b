"""A sweep over several models: the same grid for each, one table with a ``model`` column.

``sweep("mixtral-8x7b", {"model": ["mixtral-8x7b", "qwen3-30b-a3b"], "batch": [1, 16]})`` (on the
command line ``perfmodel sweep mixtral,qwen3-30b-a3b --grid batch=1,16``) evaluates the grid for
each model in turn (:func:`perfmodel.sweeps.sweep`, each model's structure compiled once) and
stacks the tables, the ``model`` column first, holding each model as it was named. Combinations
a model refuses are dropped as in a single sweep; a model none of whose combinations is valid
is refused, named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from perfmodel.errors import InputError
from perfmodel.specs.model import ModelSpec

#: The grid key that names the models.
MODEL_KEY = "model"


def model_label(model: str | ModelSpec) -> str:
    """How the ``model`` column names a model: as given, a ModelSpec by its name."""
    return model.name if isinstance(model, ModelSpec) else str(model)


def sweep_models(models: Sequence[str | ModelSpec], grid: dict[str, Any], **kwargs: Any):
    """:func:`perfmodel.sweeps.sweep` of ``grid`` (without ``model``) for each of ``models``
    (zoo names, config.json paths or ModelSpecs), stacked: a ``model`` column, then the single
    sweeps' columns. ``attrs["dropped"]`` adds up the models' (reasons named by model)."""
    import pandas as pd

    from perfmodel.sweeps import sweep

    if hasattr(models, "tolist") and not isinstance(models, (str, ModelSpec)):  # a numpy array, a pandas Series
        models = models.tolist()
    if isinstance(models, (str, ModelSpec)) or not isinstance(models, Sequence) or not models:
        raise InputError(f"grid key '{MODEL_KEY}' needs a list of one or more models, got {models!r}")
    labels = [model_label(m) for m in models]
    repeated = sorted({name for name in labels if labels.count(name) > 1})
    if repeated:
        raise InputError(f"a model is named twice: {', '.join(repeated)}")
    tables, dropped = [], {"count": 0, "of": 0, "reasons": []}
    for model, label in zip(models, labels):
        try:
            table = sweep(model, grid, **kwargs)
        except InputError as exc:
            raise InputError(f"{label}: {exc}") from None
        own = table.attrs.get("dropped") or {}
        dropped["count"] += int(own.get("count", 0))
        dropped["of"] += int(own.get("of", len(table)))
        dropped["reasons"] += [f"{label}: {reason}" for reason in own.get("reasons", [])]
        tables.append(table.assign(**{MODEL_KEY: label})[[MODEL_KEY, *table.columns]])
    out = pd.concat(tables, ignore_index=True)
    out.attrs = {"dropped": dropped}
    return out
