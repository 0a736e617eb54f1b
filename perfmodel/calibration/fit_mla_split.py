"""The host time per MLA layer of a step that holds a prompt beside decodes, from profiled steps.

vLLM's MLA backends run a step that holds prompt tokens and decodes as two attentions: the
decodes first, absorbed over the latent cache, then the prompts over re-expanded keys. In a
launched step (more tokens than the largest CUDA graph) the second path is launched from the
host beside the first, four kernels more per layer in the kernel profiles, and the step's
host time grows by ``mla_split_layer_s`` per MLA layer (:func:`perfmodel.prediction.split_host`).

Measured by ``scripts/profile_mixed_steps.py`` (rows ``validate/results/<gpu>-vllm-mixed-steps.jsonl``):
on one synchronous engine, the wall time of the step that adds a prompt of 1,024 tokens to D
running decodes, D = 0 first (the prompt alone), then D = 16, 64, 128. Each D > 0 row against the
D = 0 row of the same call gives

    t = (step(D) − step(0) − D·eager_seq_s·h) / (N_split · h),     h = (p_host / p_ref)^α

the growth of the step less the model's host time for the D further sequences, per layer that
splits (N_split: the count of :attr:`perfmodel.ops.base.Op.split_host` in the model's prompt pass),
at the reference host (``h``: :data:`perfmodel.host_speed.HOST_FACTOR` at the mean of the pair's
host probes; 1 for a profile without a host-speed fit). The fitted value is the mean of ``t``
over the pairs that qualify:

- the host steady across both rows (each row's probes before and after within
  :data:`STEADY` of each other, and of the other row's): a host that changed its speed between
  the two rows of a pair swings their difference by more than the term;
- the step host-bound (the profiled GPU kernels busy for at most
  :data:`perfmodel.measuring.mixed_steps.HOST_BOUND` of the
  D = 0 step's wall time): where the GPU sets the step, more host work hides behind it, and
  the difference does not measure it.

Only the models as built are fitted on: the pairs of a model cut to other dimensions
(``--set num_hidden_layers=8``) are its check, the per-layer form held out, reported with their
values (``checks``). Every row that does not qualify is reported with its reason, and every
serving run is held out.
Units: seconds, ms where named.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from perfmodel.host_speed import factor_at
from perfmodel.measuring.mixed_steps import busy_ms, group_name, host_bound
from perfmodel.measuring.results import read_rows
from perfmodel.paths import RESULTS_DIR, ROOT

#: Largest ratio of the highest to the lowest host probe over a pair's rows.
STEADY = 1.10


def mixed_step_files(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The profiled mixed-step rows of every GPU: ``<gpu>-vllm-mixed-steps.jsonl``."""
    return sorted(results_dir.glob("*-vllm-mixed-steps.jsonl"))


def _split_layers(row: dict[str, Any], profile) -> float:
    """N_split of a row's model: the layers of its prompt pass whose attention splits
    (Σ count·split_host at t_mla_split = 1; 0: none)."""
    import sympy as sp

    from perfmodel import symbols as s
    from perfmodel.graph import build_graph, model_values
    from perfmodel.prediction import graph_options
    from perfmodel.specs.model import load_model

    model = load_model(row["model"], list(row.get("overrides") or []))
    graph = build_graph(model, decode=False, options=graph_options(profile))
    total = sp.Add(*[count * sp.sympify(op.split_host) for count, op in graph.all_ops()])
    return float(total.subs({**model_values(model), s.t_mla_split: 1.0}))


def _why_not(pair: tuple[dict, dict]) -> str | None:
    """Why a (D = 0, D > 0) pair cannot measure the term, or None."""
    alone, beside = pair
    probes = [*alone["host_probe_ms"], *beside["host_probe_ms"]]
    if max(probes) > STEADY * min(probes):
        return f"host not steady (probes {min(probes):.1f}-{max(probes):.1f} ms)"
    busy = busy_ms(alone)
    if not host_bound(alone):
        return (f"GPU-bound (kernels busy {busy:.1f} of {alone['mixed_median_ms']:.1f} ms)" if busy is not None
                else "no kernel profile of the prompt's step")
    return None


def fit_mla_split(base: dict[str, Any], files: list[Path] | None = None
                  ) -> tuple[float | None, dict[str, Any]]:
    """``mla_split_layer_s`` (s) and its record (the pairs used and left out, with reasons);
    None where no pair qualifies. ``base``: the profile as fitted so far (its host terms and
    host speed hold)."""
    from perfmodel.calibration.fit import _profile

    profile = _profile(base)
    latency = base["latency"]
    per_seq = float(latency.get("eager_seq_s") or 0.0)
    used, checks, left_out, values = [], [], [], []
    paths = files if files is not None else mixed_step_files()
    for path in paths:
        rows = read_rows(path, unique=False, warn=False).rows  # one point id for every D
        alone = {(r["model"], tuple(r.get("overrides") or []), r.get("quantization")): r
                 for r in rows if int(r["decodes"]) == 0 and r.get("mixed_median_ms")}
        for row in rows:
            key = (row["model"], tuple(row.get("overrides") or []), row.get("quantization"))
            if int(row["decodes"]) == 0 or key not in alone or not row.get("mixed_median_ms"):
                continue
            name = f"{path.name}: {group_name(row)} D={row['decodes']}"
            layers = _split_layers(row, profile)
            if layers <= 0:
                continue  # an attention that does not split: nothing to measure
            reason = _why_not((alone[key], row))
            if reason:
                left_out.append(f"{name}: {reason}")
                continue
            probes = [*alone[key]["host_probe_ms"], *row["host_probe_ms"]]
            h = factor_at(fmean(probes), latency.get("host_probe_ref_ms"), latency.get("host_speed_exponent"))
            grown_s = (row["mixed_median_ms"] - alone[key]["mixed_median_ms"]) * 1e-3
            t = (grown_s - int(row["decodes"]) * per_seq * h) / (layers * h)
            entry = {"row": name, "grown_ms": round(grown_s * 1e3, 3), "split_layers": layers,
                     "host_factor": round(h, 4), "per_layer_ms": round(t * 1e3, 4)}
            if row.get("overrides"):  # a model cut to other dimensions: a check of the per-layer form, not fitted on
                checks.append(entry)
                continue
            values.append(t)
            used.append(entry)
    return profiled_mean(values, paths, pairs=used, checks=checks, left_out=left_out)


def profiled_mean(values: list[float], paths: list[Path], **record: list) -> tuple[float | None, dict[str, Any]]:
    """A term fitted on profiled steps: the mean of its ``values`` (s, at least 0; None without
    any) and its record (the files read, then ``record``'s lists: what was used, checked and left out)."""
    from perfmodel.calibration.fit import _sig

    out = {"sources": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths], **record}
    return (max(0.0, _sig(fmean(values))) if values else None), out
