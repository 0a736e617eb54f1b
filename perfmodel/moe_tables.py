"""vLLM's tuned fused-MoE tile tables that start above small passes (``specs/vllm-moe-tables.yaml``).

A decode step whose expert shape has such a table runs tiles tuned for passes many times its
size (:func:`perfmodel.ops.moe.off_table_scale`); :func:`tuned_from` says where a table starts.
"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

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


@cache
def load_tables() -> tuple[TunedTable, ...]:
    """Every table of ``specs/vllm-moe-tables.yaml``."""
    data = read_mapping(TABLES_FILE, SpecError, expected="a mapping 'tables: [...]'")
    entries = data.get("tables")
    if not isinstance(entries, list):
        raise SpecError(f"{TABLES_FILE.name}: expected a list under 'tables'")
    tables = []
    for entry in entries:
        try:
            tables.append(TunedTable(**entry))
        except (TypeError, ValidationError) as exc:
            msg = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in msg["loc"])
            raise SpecError(f"{TABLES_FILE.name}: invalid table {entry}: {where + ': ' if where else ''}"
                            f"{msg['msg']}") from None
    return tuple(tables)


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
