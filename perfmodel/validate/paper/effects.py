"""A published study's headline effects as data: its claims, their numbers and its setup.

The study lives in ``specs/studies/<name>.yaml`` (see the comment at the top of
``moe-inference-bench.yaml`` for the fields). Claims are in percent: a relative throughput
change (side/baseline − 1), or a difference of two such changes in percentage points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, StrictBool, ValidationError, field_validator,
                      model_validator)

from perfmodel import paths
from perfmodel.errors import SpecError, validation_message
from perfmodel.specs.files import read_mapping

#: The study the report checks by default.
DEFAULT_STUDY = "moe-inference-bench"

Statistic = Literal["each", "mean", "max", "min"]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Claim(_Data):
    """One checkable claim: ``quantity`` restricted by ``where``, reduced by ``statistic``, against
    the range [``low``, ``high``] (%; None: open) or, without numbers, a ``direction``."""

    id: str
    text: str
    quantity: str
    where: dict[str, Any] = Field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    direction: Literal["+", "-"] | None = None
    statistic: Statistic = "each"

    @model_validator(mode="after")
    def _check(self) -> Claim:
        if self.low is None and self.high is None and self.direction is None:
            raise ValueError(f"claim {self.id}: give low/high or a direction")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"claim {self.id}: low ({self.low}) is above high ({self.high})")
        return self

    @property
    def sign(self) -> int:
        """The claimed sign: +1, −1, or 0 for a flat claim (a range centred on zero)."""
        if self.low is None and self.high is None:
            return 1 if self.direction == "+" else -1
        if self.low is None:
            return 1 if self.high > 0 else -1  # type: ignore[operator]
        if self.high is None:
            return 1 if self.low >= 0 else -1
        mid = (self.low + self.high) / 2
        return (mid > 0) - (mid < 0)

    def range_text(self) -> str:
        """The claimed range as people read it: ``+20…+25%``, ``> +100%``, ``≈ −50%``, ``sign −``."""
        if self.low is None and self.high is None:
            return f"sign {'+' if self.direction == '+' else '−'}"
        if self.high is None:
            return f"≥ {_pct(self.low)}"
        if self.low is None:
            return f"≤ {_pct(self.high)}"
        if self.low == self.high:
            return f"≈ {_pct(self.low)}"
        return f"{_pct(self.low).removesuffix('%')}…{_pct(self.high)}"


def _pct(value: float | None) -> str:
    text = f"{value:+.0f}%" if value is not None else "?"
    return text.replace("-", "−")


class Measured(_Data):
    """Which measured rows compare the same thing: rows differing in ``vary`` only, ``value``
    against ``baseline``, of the ``models`` named (empty: any). ``spec`` is the speculative
    decoding a row ran, ``DRAFT:γ`` (e.g. ``qwen3-1.7b:4``) or ``none``; ``moe_impl`` the MoE
    implementation (``fused``, ``unfused``: :func:`perfmodel.measuring.compare.row_moe_impl`).
    ``engine``: whose measurements (``vllm``, ours of vLLM; ``hf``, ours of transformers, e.g.
    its grouped_mm experts against its eager loop over them), predicted with that engine's
    profile."""

    vary: Literal["quant", "top_k", "ffn", "num_experts", "input_len", "spec", "moe_impl"]
    value: Any
    baseline: Any
    models: list[str] = Field(default_factory=list)
    engine: Literal["vllm", "hf"] = "vllm"


#: A parallel layout: GPUs along each of tensor, expert, pipeline and data parallelism, and
#: vLLM's expert parallelism (``expert_parallel: true``: whole experts over the tp·dp GPUs).
Layout = dict[Literal["tp", "ep", "pp", "dp", "expert_parallel"], Union[StrictBool, PositiveInt]]


class Setup(_Data):
    """The paper's setup as the reference states it, and what the prediction assumes beyond it;
    below ``assumed``, the keys only some effects have (None where an effect has none)."""

    models: list[str] = Field(min_length=1)
    gpus: int = Field(ge=1)
    layout: Layout = Field(default_factory=lambda: {"tp": 1})
    batch: list[PositiveInt] = Field(min_length=1)
    lengths: list[PositiveInt] = Field(min_length=1)
    compares: str
    assumed: list[str] = Field(default_factory=list)
    grid: Optional[dict[Literal["ffn", "num_experts", "top_k"], list[PositiveInt]]] = Field(
        default=None, description="Hyperparameters swept, each over its values.")
    layout_by_model: Optional[dict[str, Layout]] = Field(default=None, description="A model's own layout.")
    layouts: Optional[dict[str, Layout]] = Field(
        default=None, min_length=2, description="Named layouts, the first the baseline.")
    ratios: Optional[list[float]] = Field(default=None, min_length=1, description="Pruning ratios, each in (0, 1).")
    drafts: Optional[list[str]] = Field(default=None, min_length=1, description="Draft models of speculative decoding.")
    spec_tokens: Optional[PositiveInt] = Field(default=None, description="Draft tokens per step, γ.")
    spec_tokens_range: Optional[tuple[PositiveInt, PositiveInt]] = Field(
        default=None, description="The two γ compared.")
    assumed_accept: Optional[dict[str, float]] = Field(
        default=None, description="Acceptance rate α per draft, each in [0, 1): an assumption.")

    @model_validator(mode="after")
    def _ranges(self) -> Setup:
        if self.grid is not None and any(not values for values in self.grid.values()):
            raise ValueError("grid: give each hyperparameter at least one value")
        if self.ratios is not None and not all(0 < r < 1 for r in self.ratios):
            raise ValueError(f"ratios: each must lie in (0, 1), got {self.ratios}")
        if self.assumed_accept is not None and not all(0 <= a < 1 for a in self.assumed_accept.values()):
            raise ValueError("assumed_accept: each acceptance rate must lie in [0, 1)")
        return self

    def extra(self, key: str, default: Any = None) -> Any:
        """An effect-specific setup key (``grid``, ``drafts``, ``ratios``, ``layouts``…), or
        ``default`` where the effect has none."""
        value = getattr(self, key, None)
        return default if value is None else value


class Effect(_Data):
    """One headline effect: the claim in words, the checkable claims, the setup, and the
    comparisons our measurements make of it (``measured``: none, one or several)."""

    id: str
    title: str
    claim: str
    numbers: bool
    source: str
    setup: Setup
    claims: list[Claim] = Field(min_length=1)
    measured: list[Measured] = Field(default_factory=list)
    missing: str | None = None  # a parameter the paper does not give that the effect needs

    @field_validator("measured", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        """``measured`` is one comparison (a mapping) or a list of them; none: not measured."""
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value


class StudyInfo(_Data):
    name: str
    title: str
    source: str
    gpu: str
    engine: str
    metric: str
    oom_note: str
    tolerance_pp: float = Field(gt=0)


class Study(_Data):
    """A study's effects, in the order of the paper."""

    study: StudyInfo
    effects: list[Effect] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Study:
        ids = [e.id for e in self.effects] + [c.id for e in self.effects for c in e.claims]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"ids given twice: {', '.join(duplicates)}")
        return self

    def effect(self, effect_id: str) -> Effect:
        for effect in self.effects:
            if effect.id == effect_id:
                return effect
        raise SpecError(f"study {self.study.name} has no effect {effect_id}")


def study_path(name: str = DEFAULT_STUDY) -> Path:
    """The YAML file of a study by name (``specs/studies/<name>.yaml``), or a path to one."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or "/" in name or path.exists():
        return path
    return paths.STUDIES_DIR / f"{name}.yaml"


def load_study(name: str | Path = DEFAULT_STUDY) -> Study:
    """The study's effects, validated; a missing or malformed file is a :class:`SpecError`."""
    path = study_path(str(name))
    if path.is_dir():
        raise SpecError(f"{path} is a folder, not a study file (a YAML file, or a name in {paths.STUDIES_DIR})")
    if not path.is_file():
        raise SpecError(f"no study file {path}")
    data = read_mapping(path, SpecError, what="study file ")
    try:
        return Study.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: {validation_message(exc)}") from None
