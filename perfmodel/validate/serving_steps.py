"""The serving report's engine steps: traced runs' steps beside the model's step times.

Where the serving rows have the engine's step traces beside them (``<rows>-steps.jsonl``,
written by ``perfmodel measure --serving`` where vLLM describes its iterations), each run's
decode-only steps by decode count and its steps holding prompt tokens are set beside the
model's step tables (:func:`perfmodel.measuring.step_compare.compare_steps`, the vllm profile
of the GPU). Durations in ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


def engine_step_comparison(path: Path, gpu: str, models: Iterable[str]) -> list[dict[str, Any]]:
    """:func:`~perfmodel.measuring.step_compare.compare_steps` for every traced run of ``models``
    in the rows file ``path`` (none without a trace file beside it)."""
    from perfmodel.measuring.step_compare import compare_steps, load_traced_runs
    from perfmodel.profile import load_profile
    from perfmodel.validate.serving import ENGINE

    wanted = set(models)
    runs = [(row, trace) for row, trace in load_traced_runs(path) if row["model"] in wanted]
    if not runs:
        return []
    profile = load_profile(ENGINE, gpu)
    return [compare_steps(row, trace, profile, gpu) for row, trace in runs]


def _band(b: dict[str, Any]) -> str:
    return f"{b['decodes']:g}: {b['measured_p50_ms']:.1f} / {b['model_ms']:.1f}"


def engine_steps_markdown(runs: list[dict[str, Any]]) -> str:
    """The section for :func:`engine_step_comparison`'s runs ("" without any)."""
    from perfmodel.measuring.serving_replay import model_label

    if not runs:
        return ""
    lines = ["", "## Engine steps (traced runs)", "",
             "From the engine's own steps (`<rows>-steps.jsonl`), while it was busy, beside the model's step "
             "tables. Decode-only steps by how many sequences they decode: measured median / model, ms. "
             "Steps holding prompt tokens: their mean cost over the run (the busy time not in decode-only "
             "steps, those at the model's time, per such step) / the model's mean over the same steps. "
             "Around a launched step (prompt tokens beyond the largest CUDA graph), median gaps, measured / "
             "replayed on the model's host and GPU (each run of busy steps from its start): the decode-only "
             "step before it, whose outputs wait for its launch, then the launched step's own.", "",
             "| model | rate | decode-only steps, decodes: measured / model ms | steps with prompt tokens "
             "(sequences each): measured / model ms | around launched steps (pairs): before; launched, ms |",
             "|---|---|---|---|---|"]
    for r in runs:
        mixed, launches = r["mixed"], r.get("launches")
        mixed_text = "–" if mixed is None else (
            f"{mixed['steps']} ({mixed['mean_sequences']:g}): {mixed['measured_ms']:.1f} / {mixed['model_ms']:.1f}")
        launch_text = "–" if launches is None else (
            f"({launches['pairs']}) {launches['before_ms'][0]:.1f} / {launches['before_ms'][1]:.1f}; "
            f"{launches['launched_ms'][0]:.1f} / {launches['launched_ms'][1]:.1f}")
        lines.append(f"| {model_label(r['model'], r.get('scheme'), r.get('burstiness'))} | {r['rate']:g} | {'; '.join(_band(b) for b in r['decode']) or '–'} "
                     f"| {mixed_text} | {launch_text} |")
    return "\n".join(lines) + "\n"
