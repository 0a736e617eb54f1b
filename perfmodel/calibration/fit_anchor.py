"""A GPU's vllm profile anchored on the fit of a GPU measured in more kinds of rows.

The reference GPU (:data:`REFERENCE_GPU`) is measured in every kind of row the vllm fit reads:
end-to-end rows of the training models, kernel profiles, wide batches whose steps the host paces,
host-speed probes on a model cut to one layer, quantization schemes, KV-cache dtypes,
speculative decoding and serving traces. Another GPU measured in fewer kinds (its models'
end-to-end rows alone, say) cannot fit the terms those rows never show. Its fit then takes them
from the reference's fit, and fits from its own rows what they do determine:

- **fitted on the GPU's own rows**: the kernels' efficiencies (``gemm``, ``grouped_gemm``,
  ``attention``: the parameters of :data:`perfmodel.calibration.fit_vllm.PARAMETERS` outside
  ``latency``), and each quantization scheme, KV-cache dtype or tiled kernel the GPU was measured in;
  but where the GPU computes as the reference does (:func:`same_compute`: one architecture, SM
  count and tensor-core peaks), the unquantized kernel classes' compute efficiencies are the
  reference's (:data:`COMPUTE_EFFICIENCIES`): fractions of one peak, reached by the same kernels
  on the same SMs at the same clocks, which the reference's rows pin (Mixtral-8x7B's bf16
  prefills of up to 32,768 tokens, compute-bound in its large experts, and kernel profiles) and
  a GPU too small for that model in bf16 does not (the H100's: OLMoE-1B-7B's and
  Qwen1.5-MoE-A2.7B's small experts alone ran the fused MoE's fraction to its bound, 1.0, and
  left Mixtral-8x7B's prefills a third short). A scheme's two multipliers stay fitted on the
  GPU's own rows of it (fp8: Mixtral-8x7B's, whose large prefills pin its compute multiplier).
  And where the GPU has no kernel profiles of a category the reference's fit reads
  (:data:`perfmodel.calibration.fit_vllm.KERNEL_PROFILE`), the terms those profiles pin are the
  reference's (:data:`PROFILE_PINNED`: the fused MoE's exposed overlap, the attention's context
  half), as a graph node's cost is where the GPU has no microbenchmark tables: the end-to-end
  rows barely see them (the H100's end-to-end rows alone ran the exposed overlap to its bound, 0,
  from the H200's 0.26; its training models' profiled decode steps now fit it themselves);
- **the reference's**: the host's times (:data:`perfmodel.host_speed.HOST_LATENCY_FIELDS`) with
  the host's speed (``host_probe_ref_ms``, ``host_speed_exponent``) and its launch noise: they are
  the host's and the engine's, not the GPU's, and every row, on either GPU, is predicted at the
  host probe time it recorded; but the host's times that pace a replayed decode step, per step
  and per sequence (:data:`OWN_HOST_FIELDS`), are fitted on the GPU's own rows where its training
  rows hold batches the host paces (:func:`own_host_rows`): the machines lent with a GPU kind are
  their own pool of hosts, which one probe does not make alike; the fixed time per step and per
  layer of a replayed graph (``per_step_s``, ``per_layer_s``: rows of models of a few layer counts
  cannot tell the two apart); the cost of a graph node (``per_kernel_s``) where the GPU has no microbenchmark
  tables; and every quantization scheme, KV-cache dtype and tiled kernel the GPU
  was not measured in (their multipliers are fractions of the bf16 kernels' rates; a scheme
  whose dense GEMMs take another scheme's multipliers, :data:`~perfmodel.calibration.fit_vllm.DENSE_AS`,
  takes this GPU's where it fitted that scheme);
- **the reference's, where the GPU's own points check it**: an error band the GPU has too few
  held-out points to state, but some: the TTFT band of a prefill regime
  (:func:`carried_regime_bands`) and the serving band
  (:func:`perfmodel.calibration.fit_serving_band.carried_band`), each taken where the GPU's
  points lie within it and marked as carried; with no point of its own, none.

The H100 SXM and the H200 are one chip (GH100: 132 SMs, the same clocks) with other memory, so
the kernels' behaviour the reference's terms describe is the same silicon's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfmodel.errors import SpecError
from perfmodel.host_speed import HOST_LATENCY_FIELDS
from perfmodel.paths import PROFILES_DIR, ROOT
from perfmodel.profile import REFERENCE_GPU
from perfmodel.specs.files import read_mapping
from perfmodel.specs.hardware import load_gpu


#: The host's speed terms taken with the host times.
HOST_SPEED_FIELDS = ("host_probe_ref_ms", "host_speed_exponent")
#: The GPU's fixed times of a replayed graph, taken too: a GPU's rows of models of few layer counts
#: cannot tell a cost per step from one per layer (docs/h100.md, "What was tried").
FIXED_GPU_FIELDS = ("per_step_s", "per_layer_s")
#: The fitted parameters' ``latency`` fields an anchored fit holds at the anchor's.
HELD_LATENCY = frozenset((*HOST_LATENCY_FIELDS, *FIXED_GPU_FIELDS))
#: The host's times that pace a graph-replayed decode step (a time per step and one per sequence
#: in it), which an anchored fit takes from the GPU's own rows where its training rows hold batches
#: the host paces (:data:`HOST_PACED_BATCH`): the lent machines of one GPU kind are one pool of
#: hosts, and at one probe the H100's spend about 30% longer per sequence than the H200's
#: (docs/h100.md, "The joint refit: the H100's own host times per decode step").
OWN_HOST_FIELDS = ("host_step_s", "host_seq_s")
#: The smallest batch at which a training model's graph-replayed decode step is the host's: its
#: rows at this many sequences and more fit :data:`OWN_HOST_FIELDS` on their own GPU.
HOST_PACED_BATCH = 256
#: Every ``latency`` field taken from the anchor where it has one.
TAKEN_LATENCY = (*HOST_LATENCY_FIELDS, *HOST_SPEED_FIELDS, *FIXED_GPU_FIELDS, "launch_noise")
#: The kernel classes whose compute efficiency (a fraction of the tensor cores' peak) a GPU of the
#: anchor's compute takes from it (:func:`same_compute`).
COMPUTE_EFFICIENCIES = ("gemm", "grouped_gemm", "attention")
#: Per category of profiled kernels the vllm fit reads: the efficiency term (class, field) those
#: profiles pin, which a GPU without such profiles takes from the anchor.
PROFILE_PINNED: dict[str, tuple[str, str]] = {"expert_gemm": ("grouped_gemm", "exposed"),
                                              "attention": ("attention", "context_half")}


def same_compute(gpu: str, other: str) -> bool:
    """Whether two GPUs compute alike: one architecture, SM count and tensor-core peaks in their
    spec files (the H100 SXM and the H200: one GH100 die, other memory)."""
    mine, theirs = load_gpu(gpu), load_gpu(other)
    return (mine.architecture, mine.sm_count, mine.peak_tflops) == (theirs.architecture, theirs.sm_count,
                                                                   theirs.peak_tflops)


def anchored_efficiencies(shared_compute: bool, unprofiled: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The efficiency terms (class, field) an anchored fit takes from the anchor: the compute
    efficiencies of :data:`COMPUTE_EFFICIENCIES` where the GPU computes as the anchor does, and the
    :data:`PROFILE_PINNED` terms of the ``unprofiled`` categories (none of the GPU's rows profiled them)."""
    terms = [(name, "compute") for name in COMPUTE_EFFICIENCIES] if shared_compute else []
    return terms + [PROFILE_PINNED[category] for category in unprofiled]


def own_host_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The point ids of the training rows whose decode steps the host paces (B ≥
    :data:`HOST_PACED_BATCH`): where there are any, an anchored fit takes :data:`OWN_HOST_FIELDS`
    from its own rows."""
    return sorted({r["point_id"] for r in rows if int(r.get("batch") or 0) >= HOST_PACED_BATCH})


def held_parameters(shared_compute: bool, unprofiled: tuple[str, ...] = (),
                    own_host: bool = False) -> frozenset[tuple[str, str, str | None]]:
    """The fitted parameters (:data:`perfmodel.calibration.fit_vllm.PARAMETERS`' names) an
    anchored fit holds at the anchor's values: :data:`HELD_LATENCY` (but :data:`OWN_HOST_FIELDS`
    where ``own_host``: the GPU's rows fit them, :func:`own_host_rows`) and
    :func:`anchored_efficiencies`."""
    held = {("latency", field, None) for field in HELD_LATENCY if not (own_host and field in OWN_HOST_FIELDS)}
    held |= {("efficiency", name, field) for name, field in anchored_efficiencies(shared_compute, unprofiled)}
    return frozenset(held)


def anchor_path(gpu: str, anchor: str | None) -> Path | None:
    """The fitted profile anchoring ``gpu``'s fit: ``anchor``'s (a GPU name), the reference
    GPU's for ``"auto"`` (none for the reference itself), none for ``None``."""
    if anchor is None or (anchor == "auto" and gpu == REFERENCE_GPU):
        return None
    name = REFERENCE_GPU if anchor == "auto" else anchor
    if name == gpu:
        raise SpecError(f"a fit cannot be anchored on its own GPU ({gpu})")
    path = PROFILES_DIR / f"{name}-vllm.yaml"
    if not path.is_file():
        raise SpecError(f"no fitted vllm profile of {name} to anchor on ({path.relative_to(ROOT)})")
    return path


def read_anchor(path: Path) -> dict[str, Any]:
    """The anchoring profile as a mapping; it names its GPU."""
    profile = read_mapping(path, SpecError, what="profile ")
    if not isinstance(profile.get("gpu"), str):
        raise SpecError(f"{path.name}: the anchoring profile names no gpu")
    return profile


def seeded(base: dict[str, Any], anchor: dict[str, Any], shared_compute: bool = False,
           unprofiled: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """``base`` with the anchor's :data:`TAKEN_LATENCY` fields, where ``base`` has no
    benchmarked graph-node cost its ``per_kernel_s``, and its efficiency terms of
    :func:`anchored_efficiencies`; and the fields taken (``latency`` fields by name, efficiency
    terms as ``efficiency.<class>.<field>``)."""
    latency = dict(base["latency"])
    theirs = anchor.get("latency") or {}
    taken = [field for field in TAKEN_LATENCY if field in theirs]
    if not latency.get("per_kernel_s") and "per_kernel_s" in theirs:
        taken.append("per_kernel_s")
    latency.update({field: theirs[field] for field in taken})
    efficiency = {name: dict(entry) for name, entry in (base.get("efficiency") or {}).items()}
    for name, field in anchored_efficiencies(shared_compute, unprofiled):
        value = ((anchor.get("efficiency") or {}).get(name) or {}).get(field)
        if value is not None:
            efficiency.setdefault(name, {})[field] = value
            taken.append(f"efficiency.{name}.{field}")
    return {**base, "latency": latency, "efficiency": efficiency}, taken


UNCHECKED = "no row of it on {gpu}; not checked here"


def note_carried_checks(base: dict[str, Any], stats: dict[str, Any]) -> None:
    """Set, in place, the band flag of each of ``base``'s quantization schemes and KV-cache dtypes
    that this GPU's held-out rows check (``stats``: the fit's ``residuals``, by section), and, for
    an entry carried from the anchor, say in its reason that it was checked here, not left
    unchecked."""
    for section in ("quantization", "kv_cache"):
        mine = base.get(section) or {}
        for key, check in (stats.get(section) or {}).items():
            if key not in mine:
                continue
            entry = mine[key]
            entry["band"] = check["within"]
            if entry.get("carried_from") and isinstance(entry.get("reason"), str):
                verdict = "within the band" if check["within"] else "outside the band"
                entry["reason"] = entry["reason"].replace(
                    UNCHECKED.format(gpu=base["gpu"]),
                    f"no fit of it on {base['gpu']}; its held-out rows there check it: "
                    f"fit.residuals.{section}.{key}, {verdict}")


def carried_entries(base: dict[str, Any], anchor: dict[str, Any], dense_as: dict[str, str]) -> list[str]:
    """Fill ``base`` (in place) with the anchor's quantization schemes and KV-cache dtypes it has
    no fit of, and with the anchor's host times of the schemes it fitted; returns what was
    carried, as ``section.name`` strings."""
    name = anchor.get("gpu", "the anchor")
    carried = []
    for section in ("quantization", "kv_cache"):
        mine = base.setdefault(section, {})
        own = set(mine)  # fitted on this GPU's rows
        for key, entry in (anchor.get(section) or {}).items():
            if key in mine:
                if section == "quantization" and "host_layer_s" in entry:  # a host time: the anchor's
                    mine[key]["host_layer_s"] = entry["host_layer_s"]
                continue
            entry = {**entry, "band": False, "carried_from": name,
                     "reason": f"{name}'s ({UNCHECKED.format(gpu=base['gpu'])}): {entry.get('reason', '')}"}
            like = dense_as.get(key) if section == "quantization" else None
            if like in own:
                for field in ("gemm_memory", "gemm_compute"):
                    if field in mine[like]:
                        entry[field] = mine[like][field]
                entry["reason"] += f"; its dense GEMMs' multipliers are {like}'s on {base['gpu']}"
            mine[key] = entry
            carried.append(f"{section}.{key}")
    return carried


def carried_regime_bands(band: dict[str, Any], own_points: dict[str, Any], anchor: dict[str, Any]) -> list[str]:
    """Fill ``band`` (a fitted ``error_band``, in place) with the anchor's half-widths of a regime
    this GPU states none for, having too few held-out points of it, where the ones it has
    (``own_points``: the fit's ``band points``) lie within them: their 90th percentile of |error|
    at most the anchor's half-width. The TTFT band of each prefill regime
    (:data:`perfmodel.calibration.fit.TTFT_BAND_FIELDS`, where the band is split by prefill
    regime: ``ttft_launch_bound`` stated), and the host-bound decode step's ITL, E2E and
    throughput bands together (``*_host_bound``, where the band is not split by decode regime:
    its one band is then the GPU-bound steps' it was stated from, and a host-bound step takes
    the anchor's, checked by the ITL and throughput of this GPU's host-bound steps). Returns the
    fields carried, and says so in ``band["source"]``."""
    from perfmodel.calibration.fit import DECODE_BAND_METRICS, DECODE_BAND_SUFFIX, HOST_BOUND, TTFT_BAND_FIELDS

    theirs, name = anchor.get("error_band") or {}, anchor.get("gpu", "the anchor")

    def within(key: str, field: str) -> dict[str, Any] | None:
        own = own_points.get(key) or {}
        return own if own.get("n") and own["p90_abs_pct"] / 100 <= theirs[field] else None

    carried, notes = [], []
    if band.get("ttft_launch_bound") is not None:
        for regime, field in TTFT_BAND_FIELDS.items():
            if band.get(field) is not None or theirs.get(field) is None:
                continue
            own = within(f"ttft {regime}", field)
            if own is not None:
                band[field] = theirs[field]
                carried.append(field)
                notes.append(f"{field} is {name}'s, within which this GPU's held-out {regime} prefills "
                              f"({own['n']}) lie (90th percentile of |error| {own['p90_abs_pct']:.1f}%)")
    suffix = DECODE_BAND_SUFFIX[HOST_BOUND]
    fields = [metric + suffix for metric in DECODE_BAND_METRICS]
    if band.get(fields[0]) is None and all(theirs.get(field) is not None for field in fields):
        checks = {metric: within(f"{metric} {HOST_BOUND}", metric + suffix) for metric in ("decode_step", "throughput")}
        if all(own is not None for own in checks.values()):
            band.update({field: theirs[field] for field in fields})
            carried += fields
            own = checks["decode_step"]
            notes.append(f"{', '.join(fields)} are {name}'s, within which this GPU's held-out {HOST_BOUND} "
                         f"decode steps ({own['n']}) lie (90th percentile of |error| in ITL "
                         f"{own['p90_abs_pct']:.1f}%, in throughput {checks['throughput']['p90_abs_pct']:.1f}%)")
    if notes:
        band["source"] = f"{band.get('source', '')}; {'; '.join(notes)}"
    return carried


def anchor_record(path: Path, anchor: dict[str, Any], taken: list[str], carried: list[str],
                  own_host: list[str] = ()) -> dict[str, Any]:
    """The ``fit.anchor`` record: which profile, which fields taken from it (:func:`seeded`'s, but
    :data:`OWN_HOST_FIELDS` where the GPU's ``own_host`` rows fit them), which entries carried,
    and the rows the host's own times were fitted on."""
    own = set(OWN_HOST_FIELDS) if own_host else set()
    record = {"profile": str(path.relative_to(ROOT)), "gpu": anchor.get("gpu"),
              "held": sorted(field for field in taken if field not in own), "carried": carried}
    if own_host:
        record["own_host"] = {"fields": list(OWN_HOST_FIELDS), "min_batch": HOST_PACED_BATCH,
                              "points": list(own_host)}
    return record
