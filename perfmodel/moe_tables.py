"""vLLM's tuned fused-MoE tile tables (``specs/vllm-moe-tables.yaml``).

A decode step whose expert shape has a table that starts above small passes runs tiles tuned for
passes many times its size (:func:`perfmodel.ops.moe.off_table_scale`); :func:`tuned_from` says
where such a table starts. A table's keys (:func:`table_keys`) say which entry a pass runs
(:func:`nearest_key`, vLLM's rule), and so where the kernel's tiles change.
"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from perfmodel.errors import SpecError
from perfmodel.paths import SPECS_DIR
from perfmodel.specs.files import read_mapping

TABLES_FILE = SPECS_DIR / "vllm-moe-tables.yaml"


class TunedTable(BaseModel):
    """One tuned table: the GPU, the expert shape on one GPU (experts, intermediate width), the
    scheme its experts run at, and its smallest tuned pass (tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str
    experts: PositiveInt
    width: PositiveInt
    scheme: str
    from_tokens: PositiveInt


class ShippedTable(BaseModel):
    """A tuned table vLLM ships: the GPU, the expert shape on one GPU, the scheme."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str
    experts: PositiveInt
    width: PositiveInt
    scheme: str


class TableKeys(BaseModel):
    """The keys of one tuned table: the GPU, the expert shape on one GPU, the scheme, and the
    passes (tokens) the table was tuned at, in its file's order (which breaks vLLM's ties)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str
    experts: PositiveInt
    width: PositiveInt
    scheme: str
    keys: tuple[PositiveInt, ...] = Field(min_length=1)

    @field_validator("keys")
    @classmethod
    def _distinct(cls, keys: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(keys)) != len(keys):
            raise ValueError("a table's keys must be distinct")
        return keys


def _entries(section: str, kind: type[BaseModel], label: str, required: bool = True) -> tuple:
    """The entries of one list of ``specs/vllm-moe-tables.yaml``, each checked as ``kind``
    (none where the file has no such list and it is not ``required``)."""
    data = read_mapping(TABLES_FILE, SpecError, expected="a mapping 'tables: [...]'")
    entries = data.get(section, None if required else [])
    if not isinstance(entries, list):
        raise SpecError(f"{TABLES_FILE.name}: expected a list under '{section}'")
    out = []
    for entry in entries:
        try:
            out.append(kind(**entry))
        except (TypeError, ValidationError) as exc:
            msg = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in msg["loc"])
            raise SpecError(f"{TABLES_FILE.name}: invalid {label} {entry}: "
                            f"{where + ': ' if where else ''}{msg['msg']}") from None
    return tuple(out)


@cache
def load_tables() -> tuple[TunedTable, ...]:
    """Every table of ``specs/vllm-moe-tables.yaml`` that starts above small passes."""
    return _entries("tables", TunedTable, "table")


@cache
def load_table_keys() -> tuple[TableKeys, ...]:
    """The keys of every table ``specs/vllm-moe-tables.yaml`` lists them for."""
    return _entries("keys", TableKeys, "table keys", required=False)


@cache
def load_shipped() -> frozenset[tuple[str, int, int, str]]:
    """(gpu, experts, width, scheme) of every tuned table vLLM ships for the GPUs of
    ``specs/hardware/`` (``shipped`` in ``specs/vllm-moe-tables.yaml``)."""
    return frozenset((t.gpu, t.experts, t.width, t.scheme)
                     for t in _entries("shipped", ShippedTable, "shipped table", required=False))


def has_table(gpu: str | None, experts: float, width: float, scheme: str) -> bool:
    """Whether vLLM ships a tuned table for ``experts`` experts of intermediate width ``width``
    on one ``gpu``, run at ``scheme`` (else its default tile rule runs them)."""
    return (gpu, experts, width, scheme) in load_shipped()


def shipped_shape(experts: float, width: float) -> tuple[float, float] | None:
    """(experts, width) where vLLM ships a tuned table for that expert shape on some GPU and
    scheme, else None: the shapes whose fused-MoE tiles are not the default rule's somewhere, so
    that a sweep builds their ops apart from those of shapes that run the rule."""
    return (experts, width) if (experts, width) in _shipped_shapes() else None


@cache
def _shipped_shapes() -> frozenset[tuple[int, int]]:
    """(experts, width) of every tuned table vLLM ships, whatever the GPU and scheme."""
    return frozenset((e, w) for _, e, w, _ in load_shipped())


def table_keys(gpu: str | None, experts: float, width: float, scheme: str) -> tuple[int, ...]:
    """The keys, in the file's order, of vLLM's table for ``experts`` experts of intermediate width
    ``width`` on one ``gpu``, run at ``scheme``, where they are listed; () otherwise."""
    for table in load_table_keys():
        if (table.gpu, table.experts, table.width, table.scheme) == (gpu, experts, width, scheme):
            return table.keys
    return ()


def nearest_key(tokens: float, keys: tuple[int, ...]) -> int:
    """The key whose entry vLLM runs for a pass of ``tokens``: the nearest, the first in the
    file's order on a tie (vLLM 0.26 ``fused_moe.py``: ``min(keys, key=lambda x: abs(x - M))``)."""
    return min(keys, key=lambda key: abs(key - tokens))


def zoo_shapes(table: TunedTable, degrees: tuple[int, ...] = (1, 2, 4, 8)) -> list[tuple[str, int]]:
    """The zoo models whose routed experts have the table's shape on one GPU at some tensor-
    parallel degree of ``degrees`` (E experts of width I/tp), as (name, tp); the scheme is the
    table's (a model at another scheme meets another table)."""
    return zoo_experts(table.experts, table.width, degrees=degrees)


def zoo_experts(experts: int, width: int, *, hidden: int | None = None, top_k: int | None = None,
                degrees: tuple[int, ...] = (1, 2, 4, 8)) -> list[tuple[str, int]]:
    """The zoo models with ``experts`` routed experts of width ``width`` on one GPU at some tensor-
    parallel degree of ``degrees`` (I/tp), and of that hidden size and top-k where given, as
    (name, tp)."""
    from perfmodel.specs.model import load_model
    from perfmodel.specs.zoo import zoo_names

    out = []
    for name in zoo_names():
        model = load_model(name)
        moe = model.moe
        if (moe is None or moe.n_experts != experts or hidden not in (None, model.hidden)
                or top_k not in (None, moe.top_k)):
            continue
        out += [(name, tp) for tp in degrees if moe.expert_intermediate == width * tp]
    return out


def tuned_from(gpu: str | None, experts: float, width: float, scheme: str) -> int:
    """The smallest tuned pass (tokens) of vLLM's table for ``experts`` experts of intermediate
    width ``width`` on one ``gpu``, run at ``scheme``, where it is listed; 0 otherwise."""
    for table in load_tables():
        if (table.gpu, table.experts, table.width, table.scheme) == (gpu, experts, width, scheme):
            return table.from_tokens
    return 0
