"""The points of a measurement sweep, their ids and their order.

A sweep is models x phases x (S, O) x B. ``--input-len "128,512;2048"`` gives two phases: every
model is measured at S in {128, 512} before any model is measured at S = 2048, so a run cut short
by its time budget has the cheap, broad points first. Within a phase points are grouped by model
(one model build serves all of its points) and ordered by S, then O, then B (growing memory, so a
point that runs out of memory comes last in its group).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from perfmodel.errors import InputError


@dataclass(frozen=True)
class SweepPoint:
    """One measurement: a model at batch B, input length S, output length O, under settings.

    ``settings`` holds backend-specific engine settings as sorted ``(key, value)`` string pairs
    (e.g. ``("tp", "1")`` for vLLM); they are part of the point id.
    """

    model: str
    batch: int
    input_len: int
    output_len: int
    backend: str = "hf"
    overrides: tuple[str, ...] = ()
    layers: int | None = None
    experts_impl: str = "grouped_mm"
    dtype: str = "bfloat16"
    cuda_graphs: bool = True
    full_run: bool = False
    settings: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def point_id(self) -> str:
        """A stable, human-readable key: equal settings give equal ids, across runs."""
        parts = [
            self.backend,
            self.model.lower(),
            "set=" + ";".join(sorted(self.overrides)),
            f"layers={self.layers if self.layers is not None else 'all'}",
            f"B={self.batch}",
            f"S={self.input_len}",
            f"O={self.output_len}",
            f"experts={self.experts_impl}",
            f"dtype={self.dtype}",
            f"graphs={int(self.cuda_graphs)}",
            f"full={int(self.full_run)}",
        ]
        parts += [f"{k}={v}" for k, v in sorted(self.settings)]
        return "|".join(parts)

    @property
    def group_key(self) -> tuple:
        """Points with the same key share one built model."""
        return (self.backend, self.model.lower(), tuple(sorted(self.overrides)), self.layers,
                self.experts_impl, self.dtype, tuple(sorted(self.settings)))

    @property
    def max_cache_len(self) -> int:
        """Tokens the KV cache is allocated for: S + O."""
        return self.input_len + self.output_len


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,16,32"`` -> ``[1, 16, 32]`` (positive integers, order kept, duplicates dropped)."""
    values: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise InputError(f"bad {what} '{item}': expected an integer") from None
        if value < 1:
            raise InputError(f"bad {what} {value}: must be >= 1")
        if value not in values:
            values.append(value)
    if not values:
        raise InputError(f"no {what} given")
    return values


def parse_phases(text: str, what: str = "input length") -> list[list[int]]:
    """``"128,512;2048"`` -> ``[[128, 512], [2048]]``: ';' separates phases run one after another."""
    phases = [parse_int_list(chunk, what) for chunk in str(text).split(";") if chunk.strip()]
    if not phases:
        raise InputError(f"no {what} given")
    return phases


def parse_models(text: str) -> list[str]:
    """A comma-separated model list (zoo names, aliases or config.json paths)."""
    models = [m.strip() for m in str(text).split(",") if m.strip()]
    if not models:
        raise InputError("no model given")
    return models


@dataclass(frozen=True)
class FullRunSpec:
    """Which points also get a full, unsampled decode: ``[model:]BxS`` entries."""

    entries: tuple[tuple[str | None, int, int], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> "FullRunSpec":
        if not text:
            return cls()
        entries = []
        for item in str(text).split(","):
            item = item.strip()
            if not item:
                continue
            model, _, size = item.rpartition(":")
            b, sep, s = size.lower().partition("x")
            try:
                entries.append((model.strip().lower() or None, int(b), int(s)))
            except ValueError:
                raise InputError(f"bad --full-run entry '{item}': expected [MODEL:]BxS, e.g. 16x128") from None
            if not sep:
                raise InputError(f"bad --full-run entry '{item}': expected [MODEL:]BxS, e.g. 16x128")
        return cls(tuple(entries))

    def matches(self, model: str, batch: int, input_len: int) -> bool:
        return any(
            (m is None or m == model.lower()) and b == batch and s == input_len
            for m, b, s in self.entries
        )


def build_points(
    models: Iterable[str],
    batches: list[int],
    input_phases: list[list[int]],
    output_lens: list[int] | None = None,
    *,
    backend: str = "hf",
    overrides: Iterable[str] = (),
    layers: int | None = None,
    experts_impl: str = "grouped_mm",
    dtype: str = "bfloat16",
    cuda_graphs: bool = True,
    full_run: FullRunSpec | None = None,
    settings: dict[str, str] | None = None,
) -> list[SweepPoint]:
    """All points of a sweep in measuring order (see the module docstring).

    ``output_lens=None`` pairs O = S; otherwise every S is combined with every O.
    """
    full_run = full_run or FullRunSpec()
    overrides = tuple(overrides)
    settings_t = tuple(sorted((str(k), str(v)) for k, v in (settings or {}).items()))
    points: list[SweepPoint] = []
    for phase in input_phases:
        for model in models:
            for s in phase:
                for o in (output_lens or [s]):
                    for b in batches:
                        points.append(
                            SweepPoint(
                                model=model, batch=b, input_len=s, output_len=o, backend=backend,
                                overrides=overrides, layers=layers, experts_impl=experts_impl,
                                dtype=dtype, cuda_graphs=cuda_graphs,
                                full_run=full_run.matches(model, b, s), settings=settings_t,
                            )
                        )
    seen: set[str] = set()
    unique = []
    for p in points:
        if p.point_id not in seen:
            seen.add(p.point_id)
            unique.append(p)
    return unique


def group_points(points: list[SweepPoint]) -> list[list[SweepPoint]]:
    """Consecutive runs of points sharing a model build (order kept)."""
    groups: list[list[SweepPoint]] = []
    for p in points:
        if groups and groups[-1][0].group_key == p.group_key:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def with_graphs(point: SweepPoint, enabled: bool) -> SweepPoint:
    """A copy of ``point`` with CUDA graphs switched on or off."""
    return replace(point, cuda_graphs=enabled)
