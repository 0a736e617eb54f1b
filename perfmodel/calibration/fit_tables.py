"""The microbenchmark tables as timed rows of model ops (:class:`perfmodel.calibration.fit_curves.Rows`).

Each table's rows become numbers for the symbols of their benchmarked call
(:mod:`perfmodel.calibration.bench_shapes`): the FLOPs, bytes and efficiency size a row is
fitted with are the model's counts of that call, not the table's ``flops``/``bytes`` columns.

Rows are dropped with a reason, in this order: not measured (status not ok, no positive
time), another dtype, faster than a datasheet peak by the model's counts (working set
resident in L2), and last the rows whose shapes come *only* from held-out models (rows from
the sweep grid, ``seed_grid``, shared with a training model, or without a model column stay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import sympy as sp

from perfmodel.calibration.bench_shapes import (
    D_IN, D_OUT, ELEMENTWISE_KERNELS, EXPERTS_HIT, BenchCall, gemm_call, grouped_gemm_call,
    memory_calls, residual_norm_call, sdpa_decode_call, sdpa_prefill_call,
)
from perfmodel.calibration.fit_curves import Rows, op_amounts
from perfmodel.errors import SpecError
from perfmodel.symbols import B, H, I_d, L, S, T, d_h, n_h, n_kv

#: Tables the fit reads, by op class (moe_block.csv is not used).
TABLES = {"gemm": "gemm.csv", "grouped_gemm": "grouped_gemm.csv",
          "attention": "attention.csv", "elementwise": "memory.csv"}


def read_table(data_dir: Path, name: str) -> pd.DataFrame:
    """One table of ``data_dir``; a missing or unparsable file is a :class:`SpecError`."""
    path = Path(data_dir) / name
    if not path.is_file():
        raise SpecError(f"calibration data {data_dir} has no {name} (microbenchmark table missing: "
                        f"perfmodel calibrate bench on that GPU writes it)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None


def models_in(cell: object) -> set[str]:
    """Model names in a cell like 'a:k_proj;b:o_proj' or 'a;b' (empty for NaN/blank)."""
    if not isinstance(cell, str):
        return set()
    parts = (p.strip() for p in cell.replace(",", ";").split(";"))
    return {p.split(":", 1)[0].strip() for p in parts if p}


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(float)


def _rows(call: BenchCall, dtype: str, df: pd.DataFrame, values: dict[sp.Symbol, np.ndarray],
          group, present: np.ndarray | None = None) -> Rows:
    n = len(df)
    present = np.ones((len(call.ops), n), dtype=bool) if present is None else present
    return Rows(call=call, dtype=dtype, values={s: np.asarray(v, dtype=float) for s, v in values.items()},
                present=present, t=_column(df, "median_ms") / 1e3,
                group=np.broadcast_to(np.asarray(group, dtype=object), (n,)).copy(),
                index=df.index.to_numpy())


def amounts(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) per row: the model's counts of the ops each row ran."""
    parts = op_amounts(rows)
    return sum(p["flops"] for p in parts), sum(p["bytes"] for p in parts)


class _Filter:
    """Drops rows with a reason, recording their row numbers per reason."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.excluded: dict[str, list[int]] = {}

    def drop(self, mask, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.excluded.setdefault(reason, []).extend(int(i) for i in self.df.index[mask])
            self.df = self.df[~mask]

    def common(self) -> None:
        """Rows not measured: status not ok, or no positive time."""
        self.drop(self.df["status"].astype(str) != "ok", "status not ok")
        self.drop(~(self.df["median_ms"].astype(float) > 0), "no positive median time")

    def held_out(self, exclude_models: set[str], model_cols: tuple[str, ...]) -> None:
        """Rows whose shapes come only from held-out models (applied last, so this list is
        exactly the rows the held-out models took out of the fit)."""
        if exclude_models:
            sets = [set().union(*(models_in(r[c]) for c in model_cols if c in self.df.columns))
                    for _, r in self.df.iterrows()]
            self.drop([bool(s) and s <= exclude_models for s in sets], "held-out model(s) only")

    def too_fast(self, flops: np.ndarray, nbytes: np.ndarray, f_peak: float, bw: float) -> None:
        """Rows beating a datasheet peak (working set resident in L2): not an HBM roofline.
        ``flops``/``nbytes``: the model's counts of each current row's call."""
        flops, nbytes = pd.Series(flops, index=self.df.index), pd.Series(nbytes, index=self.df.index)
        for amount, peak, reason in ((nbytes, bw, "above datasheet HBM bandwidth (L2-resident)"),
                                     (flops, f_peak, "above datasheet FLOP/s")):
            sec = _column(self.df, "median_ms") / 1e3
            self.drop(amount.loc[self.df.index].to_numpy(float) / sec > peak, reason)

    def result(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(sorted(v)) for k, v in sorted(self.excluded.items())}


def gemm_rows(df: pd.DataFrame, excl: set[str], dtype: str, f_peak: float, bw: float):
    """Dense GEMM rows: T = M, K → N. Returns (rows, excluded)."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["dtype"] != dtype, f"dtype not {dtype}")

    def rows_of(d: pd.DataFrame) -> Rows:
        m = _column(d, "m")
        group = np.where(m <= 16, "M<=16", np.where(m <= 256, "16<M<=256", "M>256"))
        return _rows(gemm_call(), dtype, d, {T: m, D_IN: _column(d, "k"), D_OUT: _column(d, "n")},
                     group)

    f.too_fast(*amounts(rows_of(f.df)), f_peak, bw)
    f.held_out(excl, ("roles",))
    return rows_of(f.df), f.result()


def grouped_rows(df: pd.DataFrame, excl: set[str], dtype: str, f_peak: float, bw: float):
    """Grouped GEMM rows (one ``grouped_mm`` each): T = routed rows, K → N over the experts
    hit. Returns (rows, excluded)."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["dtype"] != dtype, f"dtype not {dtype}")

    def rows_of(d: pd.DataFrame) -> Rows:
        src = np.where(d["source"] == "seed_grid", "grid:", "model:")
        return _rows(grouped_gemm_call(), dtype, d,
                     {T: _column(d, "routed_rows"), D_IN: _column(d, "k"), D_OUT: _column(d, "n"),
                      EXPERTS_HIT: _column(d, "experts_hit")}, src + d["routing"].astype(str))

    f.too_fast(*amounts(rows_of(f.df)), f_peak, bw)
    f.held_out(excl, ("source",))
    return rows_of(f.df), f.result()


def _attention_values(d: pd.DataFrame) -> dict[sp.Symbol, np.ndarray]:
    return {B: _column(d, "batch"), n_h: _column(d, "heads"), n_kv: _column(d, "kv_heads"),
            d_h: _column(d, "head_dim")}


def _prefill(d: pd.DataFrame) -> Rows:
    label = np.where(d["kv_heads"] < d["heads"], "prefill:gqa", "prefill:mha")
    return _rows(sdpa_prefill_call(), "bfloat16", d, {**_attention_values(d), S: _column(d, "seq")},
                 label)


def _decode(d: pd.DataFrame) -> Rows:
    """Masked decode rows: the key/value expansion runs only where heads are grouped."""
    call = sdpa_decode_call()
    grouped = (d["kv_heads"] < d["heads"]).to_numpy()
    present = np.array([grouped if op.op_class == "copy" else np.ones(len(d), dtype=bool)
                        for op in call.ops])
    return _rows(call, "bfloat16", d, {**_attention_values(d), L: _column(d, "alloc_len")},
                 np.where(grouped, "decode:gqa", "decode:mha"), present)


def attention_rows(df: pd.DataFrame, excl: set[str], f_peak: float, bw: float):
    """Prefill rows (the base ``attention`` curve) and the masked decode rows
    (``attention_masked`` + ``copy``). Returns (prefill, decode, excluded)."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["op"] == "attn_module", "attn_module: whole attention module, not one kernel")
    f.drop(f.df["dtype"] != "bfloat16", "dtype not bfloat16")
    f.drop(~f.df["op"].isin(["sdpa_prefill", "sdpa_decode"]), "unknown attention op")
    decode_mask = (f.df["op"] == "sdpa_decode").to_numpy()
    flops, nbytes = np.zeros(len(f.df)), np.zeros(len(f.df))
    for mask, rows_of in ((~decode_mask, _prefill), (decode_mask, _decode)):
        flops[mask], nbytes[mask] = amounts(rows_of(f.df[mask]))
    f.too_fast(flops, nbytes, f_peak, bw)
    f.held_out(excl, ("models", "model"))
    decode = f.df[f.df["op"] == "sdpa_decode"]
    f.drop(f.df["op"] == "sdpa_decode", "masked decode: fitted as attention_masked + copy")
    return _prefill(f.df), _decode(decode), f.result()


def memory_rows(df: pd.DataFrame, bw: float):
    """Elementwise rows (no FLOPs), the launch-cost rows, and the kept frame.
    Returns (rows, graph rows, kept frame, excluded)."""
    f = _Filter(df)
    f.common()
    graph = f.df[f.df["op"] == "graph_tiny_kernel"]
    f.drop(f.df["op"].isin(["graph_tiny_kernel", "eager_tiny_kernel"]), "launch-cost row")
    f.drop(~f.df["op"].isin(list(ELEMENTWISE_KERNELS)), "not an elementwise op")
    f.too_fast(*amounts(_memory(f.df)), np.inf, bw)
    d = f.df
    return _memory(d), graph, d, f.result()


def _memory(d: pd.DataFrame) -> Rows:
    """memory.csv rows as the calls of :func:`~perfmodel.calibration.bench_shapes.memory_calls`:
    rmsnorm and residual_add (T tokens × H), silu_and_mul (T rows × I_d), copy (T elements)."""
    calls = memory_calls()
    names = list(calls)
    call = BenchCall(tuple(calls[n].ops[0] for n in names))
    op = d["op"].to_numpy(object)
    copy, silu = op == "copy", op == "silu_and_mul"
    ones = np.ones(len(d))
    tokens = np.where(copy, d["size_bytes"].to_numpy(float) / 2.0,
                      np.where(silu, d["rows"].to_numpy(float), d["tokens"].to_numpy(float)))
    values = {T: tokens, H: np.where(copy | silu, ones, d["hidden"].to_numpy(float)),
              I_d: np.where(silu, d["ffn"].to_numpy(float), ones)}
    present = np.array([op == n for n in names])
    return _rows(call, "bfloat16", d, values, op, present)


def residual_norm_rows(d: pd.DataFrame) -> Rows | None:
    """perfmodel's fused ``norm`` op (residual add + RMSNorm), timed as the residual_add +
    rmsnorm rows of the same shape (T tokens × H)."""
    add = d[d["op"] == "residual_add"].set_index(["tokens", "hidden"])["median_ms"]
    nrm = d[d["op"] == "rmsnorm"].set_index(["tokens", "hidden"])["median_ms"]
    both = add.index.intersection(nrm.index).sort_values()
    if len(both) == 0:
        return None
    t_h = np.array([[float(t), float(h)] for t, h in both])
    n = len(both)
    return Rows(call=residual_norm_call(), dtype="bfloat16", values={T: t_h[:, 0], H: t_h[:, 1]},
                present=np.ones((1, n), dtype=bool),
                t=(add.loc[both].to_numpy(float) + nrm.loc[both].to_numpy(float)) / 1e3,
                group=np.full(n, "residual_norm", dtype=object), index=np.arange(n))


def graph_kernel_cost(graph: pd.DataFrame) -> tuple[float, str] | None:
    """Cost of one kernel node in a CUDA graph, s: slope of replay time against node count N
    (replay time = per-kernel median × N), or the per-kernel median at the largest N."""
    if graph.empty:
        return None
    n = graph["kernels"].to_numpy(float)
    replay = graph["median_ms"].to_numpy(float) / 1e3 * n
    distinct = sorted(set(n.astype(int).tolist()))
    if len(distinct) >= 2:
        slope = float(np.polyfit(n, replay, 1)[0])
        if slope > 0:
            return slope, f"graph_tiny_kernel rows: slope of replay time over N = {distinct}"
    i = int(np.argmax(n))
    return float(replay[i] / n[i]), f"graph_tiny_kernel row at N = {int(n[i])}"
