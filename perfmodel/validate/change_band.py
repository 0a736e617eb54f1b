"""How far the model's change is from the measured change, knob by knob: the band a what-if carries.

``perfmodel sweep --baseline KEY=VALUE`` gives each row's change against the row at VALUE
(:mod:`perfmodel.sweep_change`). Measured pairs say how far such a change is to be trusted: two
committed vLLM rows of one GPU (its results file and ``-whatif`` companion,
:func:`perfmodel.validate.paper.measured.load_rows`; the groups whose routing collapsed under
dummy weights left out, :func:`~perfmodel.validate.paper.measured.without_collapsed_routing`)
that differ in one knob only, every other knob alike
(:func:`~perfmodel.validate.paper.measured.knobs`: model, layers, B, S, O, GPU count, routing,
the other MoE hyperparameters, speculative decoding, the MoE implementation; the decode sampling
and every engine setting the point id records, the KV cache's dtype among them). The knobs
(:data:`KNOBS`): the quantization scheme, top-k, the experts' FFN width and their number. Each
side is predicted as the validation predicts its row, at the host speed it probed
(:func:`~perfmodel.validate.paper.measured.predicted_metrics`). A pair's error in a metric
(:data:`METRICS`: throughput B·(S+O)/E2E, ITL, TTFT) is that of the model's ratio of the two sides
against the measured ratio, (1 + c_model)/(1 + c_measured) − 1 in %, for the changes c: a
change of +150% and one of +15% are read on one scale, where their difference in points would
grow with the change (the points, model minus measured, are kept beside it). The pair's
baseline side is the unquantized row, or the one of the smaller value.

Only pairs neither of whose rows a fit read count (:func:`perfmodel.measuring.compare.row_fitted`
under the GPU's own profile, :func:`perfmodel.validate.validation.training_set`): the band is
held out. A knob's band in a metric is the :data:`BAND_PERCENTILE` th percentile of |error| over
its held-out pairs, stated where it has at least :data:`MIN_PAIRS` of them: a change c the model
predicts stands for a measured one within (1 + c)·(1 ± band) − 1.

``perfmodel validate all --backend vllm --changes --gpu GPU`` writes it to
``validate/results/<gpu>-vllm-changes.json`` (:func:`write_change_band`), which ``sweep
--baseline`` reads as data.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.errors import InputError
from perfmodel.paths import changes_file, results_file

#: The knobs a pair varies (as :func:`perfmodel.validate.paper.measured.knobs` names them).
KNOBS = ("quant", "top_k", "ffn", "num_experts")
#: The percentile of |change error| a band is.
BAND_PERCENTILE = 90.0
#: Fewest held-out pairs behind a band.
MIN_PAIRS = 5
#: The engine whose rows and profile the band is of.
ENGINE = "vllm"
#: The metrics a change is checked in: the sweep's column, and the measured row's field (a ratio
#: of two rows needs no unit).
METRICS = {"throughput_tok_s": "throughput_tok_s", "itl_s": "itl_ms", "ttft_s": "ttft_ms"}


def _order(knob: str, value: Any) -> tuple:
    """A pair's baseline comes first: the unquantized row, else the smaller value."""
    if knob == "quant":
        return (value != "none", str(value))
    return (0, float(value))


def _label(k: dict[str, Any], knob: str) -> str:
    others = {"quant": "quant", "top_k": "k", "ffn": "F", "num_experts": "E"}
    shape = " ".join(f"{others[n]}={k[n]}" for n in KNOBS if n != knob and k[n] not in (None, "none"))
    return f"{k['model']} L={k['layers']} {shape} B={k['batch']} S={k['input_len']} O={k['output_len']}".strip()


def _settings(row: dict[str, Any], knob: str) -> tuple[tuple[str, str], ...]:
    """The engine settings a row's point id records (KV-cache dtype, graphs, MoE backend…), all but
    those that carry the knobs (``set=`` overrides, ``quant=``) and, for a quantization pair, the
    MoE backend the scheme runs on (Marlin for weight-only int4): rows that differ in any other
    setting do not pair."""
    skip = {"set", "quant", *(("moe_backend",) if knob == "quant" else ())}
    parts = (segment.partition("=") for segment in row["point_id"].split("|")[2:])
    return tuple((name, value) for name, _, value in parts if name not in skip)


def change_pairs(gpu: str) -> list[dict[str, Any]]:
    """Every measured pair of ``gpu``'s vLLM rows that differs in one of :data:`KNOBS` alone: knob,
    label (the point), value and baseline, the two rows' point ids, whether both rows are held out,
    and per metric of :data:`METRICS` both rows measured, the measured and the model's change (%),
    the error in points and the error of the model's ratio (%)."""
    from perfmodel.measuring.compare import row_fitted
    from perfmodel.profile import load_profile
    from perfmodel.validate.paper.measured import (knobs, load_rows, predicted_metrics, sampling,
                                                   without_collapsed_routing)
    from perfmodel.validate.validation import training_set

    if not results_file(ENGINE, gpu).exists():
        return []
    rows, _ = without_collapsed_routing(load_rows(gpu, ENGINE))
    train, points = training_set(load_profile(ENGINE, gpu), gpu)
    train, points = frozenset(m.lower() for m in train), frozenset(points)
    predicted: dict[str, dict[str, float]] = {}  # each row predicted once, whatever pairs it stands in

    def prediction(row: dict[str, Any]) -> dict[str, float]:
        if row["point_id"] not in predicted:
            predicted[row["point_id"]] = predicted_metrics(row, ENGINE)
        return predicted[row["point_id"]]

    keyed = [(row, {**knobs(row), "sampling": sampling(row)}) for row in rows if row.get("backend", ENGINE) == ENGINE]
    pairs = []
    for knob in KNOBS:
        groups: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for row, k in keyed:
            if k[knob] is None:
                continue
            key = (*((n, str(v)) for n, v in k.items() if n != knob), *_settings(row, knob))
            groups.setdefault(key, []).append((row, k))
        for members in groups.values():
            by_value = {}
            for row, k in members:  # one row per value: the latest of a point measured again
                by_value[k[knob]] = (row, k)
            ordered = sorted(by_value.items(), key=lambda item: _order(knob, item[0]))
            for (base_value, (base, kb)), (value, (side, _)) in itertools.combinations(ordered, 2):
                model_side, model_base = prediction(side), prediction(base)
                pair = {"knob": knob, "point": _label(kb, knob), "value": value, "baseline": base_value,
                        "side_id": side["point_id"], "base_id": base["point_id"],
                        "held_out": not (row_fitted(side, train, points) or row_fitted(base, train, points))}
                for metric, field in METRICS.items():
                    ms, mb = side.get(field), base.get(field)
                    if not (ms and mb and model_side.get(metric) and model_base.get(metric)):
                        continue
                    measured = 100 * (float(ms) / float(mb) - 1)
                    model = 100 * (model_side[metric] / model_base[metric] - 1)
                    pair[metric] = {"measured_pct": measured, "model_pct": model, "error_pp": model - measured,
                                    "ratio_error_pct": 100 * ((100 + model) / (100 + measured) - 1)}
                pairs.append(pair)
    return pairs


def band(pairs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per knob and metric, over the held-out pairs that have it: their number, the band (the
    :data:`BAND_PERCENTILE` th percentile of |ratio error|, %; None under :data:`MIN_PAIRS` pairs),
    the median |ratio error| and how many lie within 10%; and how many pairs a fit read a side of."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for knob in KNOBS:
        out[knob] = {}
        for metric in METRICS:
            mine = [p for p in pairs if p["knob"] == knob and metric in p]
            errors = np.abs([p[metric]["ratio_error_pct"] for p in mine if p["held_out"]])
            n = len(errors)
            out[knob][metric] = {
                "pairs": n, "fitted_pairs": len(mine) - n,
                "band_pct": round(float(np.percentile(errors, BAND_PERCENTILE)), 2) if n >= MIN_PAIRS else None,
                "median_pct": round(float(np.median(errors)), 2) if n else None,
                "within_10pct": int((errors <= 10).sum())}
    return out


def write_change_band(gpu: str, out: Path | None = None) -> dict[str, Any]:
    """Compute ``gpu``'s change band (:func:`change_pairs`, :func:`band`) and write it, with its
    pairs, to ``out`` (default :func:`perfmodel.paths.changes_file`); returns what was written."""
    from perfmodel.specs.hardware import load_gpu

    name = load_gpu(gpu).name
    pairs = change_pairs(name)
    result = {
        "gpu": name, "engine": ENGINE, "metrics": list(METRICS), "percentile": BAND_PERCENTILE,
        "min_pairs": MIN_PAIRS,
        "source": (f"validate/results/{name.split('-')[0]}-{ENGINE}.jsonl and its -whatif rows: pairs of rows "
                   "differing in one knob alone, both rows held out from the profile's fit; the error is the "
                   "model's ratio of the two rows against the measured ratio, in %"),
        "knobs": band(pairs),
        "pairs": [{k: ({m: round(x, 2) for m, x in v.items()} if isinstance(v, dict) else v)
                   for k, v in p.items()} for p in pairs],
    }
    path = Path(out) if out is not None else changes_file(ENGINE, name)
    try:
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    result["written"] = str(path)
    return result
