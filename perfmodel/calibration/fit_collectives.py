"""Link efficiency and per-step latency of the collectives, fitted from ``collectives.csv``.

The model times a collective (:mod:`perfmodel.ops.comm`) as

    t = steps · t_link + bus_bytes / (BW_link · η_l)

with ``bus_bytes`` the bytes one GPU sends over the link and ``steps`` the link hops a ring takes.
Per message of ``bytes`` (the nccl-tests size: the whole buffer of an all-reduce, the gathered
output of an all-gather, the scattered input of a reduce-scatter, one GPU's send buffer of an
all-to-all and of a send/recv), over ``n`` GPUs:

============== ==================== ===========
collective     bus_bytes / bytes    steps
============== ==================== ===========
all_reduce     2(n−1)/n             2(n−1)
reduce_scatter (n−1)/n              n−1
all_gather     (n−1)/n              n−1
all_to_all     (n−1)/n              n−1
send_recv      1                    1
============== ==================== ===========

These are read from the model's own ops, not written here a second time: ``all_reduce`` is
:func:`~perfmodel.ops.comm.all_reduce` at tp = n; a ring all-reduce is a reduce-scatter then an
all-gather, each half of it; one all-to-all is half of :func:`~perfmodel.ops.comm.all_to_all`
(dispatch and combine) at ep = n; a send/recv is one hop of
:func:`~perfmodel.ops.comm.pipeline_send`. The bus factor is the one nccl-tests turns an
algorithm bandwidth (bytes / t) into a bus bandwidth with.

:func:`fit_collectives` fits η_l (a fraction of the GPU spec's link bandwidth, one direction)
and t_link (seconds per step) by linear least squares on the relative residuals (every message
size counts alike, from 4 KiB to 1 GiB), per collective and jointly over the collectives the
model uses; the joint values are what an engine profile's ``efficiency.comm`` and
``latency.link_step_s`` take.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import sympy as sp

from perfmodel.errors import InputError
from perfmodel.ops import comm
from perfmodel.symbols import H, T, b_a, ep, k, link_lat, pp, tp

#: The collectives benchmarked, in table order.
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
#: The collectives the model's ops run (tensor-parallel all-reduce, expert-parallel all-to-all,
#: pipeline sends): the joint fit, for an engine profile, uses these.
MODEL_COLLECTIVES = ("all_reduce", "all_to_all", "send_recv")

_n = sp.Symbol("n", positive=True, integer=True)


@cache
def _formulas() -> dict[str, tuple[sp.Expr, sp.Expr]]:
    """(bus bytes per message byte, link steps) of each collective, in the group size n."""
    message = T * H * b_a

    def per_message(op: comm.Op, degree: sp.Symbol, buffer: sp.Expr, share: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
        bus = sp.simplify(op.comm_bytes / buffer * share).subs(degree, _n)
        steps = sp.simplify(op.fixed_latency / link_lat * share).subs(degree, _n)
        return sp.simplify(bus), sp.simplify(steps)

    ring = per_message(comm.all_reduce("all_reduce"), tp, message, sp.Integer(1))
    half = sp.Rational(1, 2)
    return {
        "all_reduce": ring,
        "all_gather": (ring[0] * half, ring[1] * half),
        "reduce_scatter": (ring[0] * half, ring[1] * half),
        "all_to_all": per_message(comm.all_to_all("all_to_all"), ep, message * k, half),
        "send_recv": per_message(comm.pipeline_send("send_recv"), pp, message, 1 / (pp - 1)),
    }


@cache
def _numeric(collective: str) -> tuple[Callable, Callable]:
    if collective not in COLLECTIVES:
        raise InputError(f"unknown collective '{collective}' (choose from {', '.join(COLLECTIVES)})")
    bus, steps = _formulas()[collective]
    return sp.lambdify(_n, bus, "numpy"), sp.lambdify(_n, steps, "numpy")


def _evaluate(fn: Callable, world_size: Any) -> np.ndarray:
    n = np.asarray(world_size, dtype=float)
    return np.broadcast_to(np.asarray(fn(n), dtype=float), n.shape).copy()


def bus_factor(collective: str, world_size: Any) -> np.ndarray:
    """Bus bytes per message byte of ``collective`` over ``world_size`` GPUs (nccl-tests' busbw
    factor); ``world_size`` may be an array."""
    return _evaluate(_numeric(collective)[0], world_size)


def link_steps(collective: str, world_size: Any) -> np.ndarray:
    """Link steps (each one latency t_link) of ``collective`` over ``world_size`` GPUs."""
    return _evaluate(_numeric(collective)[1], world_size)


def link_bandwidth(gpu: str) -> tuple[str, float]:
    """(spec name, link bandwidth in B/s one direction) of a GPU, as a prediction takes it: the
    scale-up interconnect, else PCIe."""
    from perfmodel.specs.hardware import load_gpu

    spec = load_gpu(gpu)
    link = spec.interconnect.bandwidth_gb_s if spec.interconnect else spec.pcie_gb_s
    return spec.name, link * 1e9


def read_table(table: Path | str | Any):
    """The ok rows of a collectives table (a path to ``collectives.csv`` or a DataFrame)."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        try:
            df = pd.read_csv(table)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the collectives table {table}: {exc}") from None
    missing = [c for c in ("collective", "world_size", "bytes", "time_s") if c not in df.columns]
    if missing:
        raise InputError(f"the collectives table lacks column(s) {', '.join(missing)}")
    if "status" in df.columns:
        df = df[df["status"].fillna("ok") == "ok"]
    df = df.assign(time_s=pd.to_numeric(df["time_s"], errors="coerce"),
                   bytes=pd.to_numeric(df["bytes"], errors="coerce"),
                   world_size=pd.to_numeric(df["world_size"], errors="coerce"))
    df = df[(df["time_s"] > 0) & (df["bytes"] > 0) & (df["world_size"] >= 2)]
    unknown = sorted(set(df["collective"]) - set(COLLECTIVES))
    if unknown:
        raise InputError(f"unknown collective(s) {', '.join(map(str, unknown))} in the table")
    return df


def _solve(steps: np.ndarray, bus_s: np.ndarray, t: np.ndarray, what: str) -> dict[str, float]:
    """t ≈ steps·lat + bus_s/η (bus_s: bus bytes / link B/s), least squares on t_pred/t − 1,
    lat ≥ 0 and 1/η ≥ 0."""
    from scipy.optimize import nnls

    if len(np.unique(bus_s)) < 2:
        raise InputError(f"{what}: fitting the link needs at least 2 message sizes, got {len(np.unique(bus_s))}")
    a = np.column_stack([steps, bus_s]) / t[:, None]
    scale = np.abs(a).max(axis=0)
    x, _ = nnls(a / scale, np.ones_like(t))
    lat, inv_eta = x / scale
    if inv_eta <= 0:
        raise InputError(f"{what}: the times do not grow with the message size; no link efficiency to fit")
    rel = (steps * lat + bus_s * inv_eta) / t - 1
    return {"efficiency": float(1 / inv_eta), "link_step_s": float(lat), "rows": int(len(t)),
            "mape_pct": float(np.mean(np.abs(rel)) * 100), "max_abs_pct": float(np.max(np.abs(rel)) * 100)}


def fit_collectives(table: Path | str | Any, gpu: str,
                    collectives: tuple[str, ...] = MODEL_COLLECTIVES) -> dict[str, Any]:
    """Fit η_l and t_link from a collectives table against ``gpu``'s link bandwidth.

    Returns ``{"gpu", "link_gb_s", "collectives": {name: {efficiency, link_step_s, rows,
    world_sizes, mape_pct, max_abs_pct}}, "joint": {...} (over ``collectives`` found in the
    table), "profile": {"efficiency": {"comm": {...}}, "latency": {"link_step_s": ...}}}``:
    efficiency a fraction of the link bandwidth, latencies in seconds per step, errors in %.
    ``profile`` holds the joint values in the shape of an engine profile's fields.
    """
    spec_name, link = link_bandwidth(gpu)
    df = read_table(table)
    if df.empty:
        raise InputError("the collectives table has no ok rows with a world size of 2 or more")

    def arrays(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        steps = np.concatenate([link_steps(c, g["world_size"].to_numpy()) for c, g in rows.groupby("collective")])
        bus = np.concatenate([bus_factor(c, g["world_size"].to_numpy()) * g["bytes"].to_numpy() / link
                              for c, g in rows.groupby("collective")])
        t = np.concatenate([g["time_s"].to_numpy(dtype=float) for _, g in rows.groupby("collective")])
        return steps.astype(float), bus.astype(float), t

    out: dict[str, Any] = {"gpu": spec_name, "link_gb_s": link / 1e9, "collectives": {}}
    for name in COLLECTIVES:
        rows = df[df["collective"] == name]
        if rows.empty:
            continue
        fit = _solve(*arrays(rows), what=name)
        out["collectives"][name] = {**fit, "world_sizes": sorted(int(w) for w in rows["world_size"].unique())}
    joint_rows = df[df["collective"].isin(collectives)]
    if joint_rows.empty:
        raise InputError(f"the collectives table has no rows of {', '.join(collectives)}")
    joint = _solve(*arrays(joint_rows), what="joint fit")
    out["joint"] = {**joint, "collectives": [c for c in collectives if c in set(joint_rows["collective"])]}
    out["profile"] = {
        "efficiency": {"comm": {"compute": 1.0, "memory": joint["efficiency"], "memory_half": 0.0}},
        "latency": {"link_step_s": joint["link_step_s"]},
    }
    return out
