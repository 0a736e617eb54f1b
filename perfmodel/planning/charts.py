"""The charts of the plan report (Vega-Lite through altair; the page's Vega JavaScript:
:func:`perfmodel.vega.vega_scripts`). Times in ms, costs in US dollars."""

from __future__ import annotations

from typing import Any, Optional

#: Most configurations drawn in the per-configuration charts (cheapest first).
MAX_CONFIGS = 30


def frontier_chart(points: list[dict[str, Any]], front: list[dict[str, Any]]):
    """Output tokens/s per GPU against tokens/s per user, every candidate, the Pareto front."""
    import altair as alt
    import pandas as pd

    if not points:
        return None
    data = pd.DataFrame(points)
    base = alt.Chart(data).mark_point(filled=True, size=70, opacity=0.8).encode(
        x=alt.X("tok_s_per_user:Q", title="output tokens/s per user (1/TPOT)"),
        y=alt.Y("output_tok_s_per_gpu:Q", title="output tokens/s per GPU"),
        color=alt.Color("gpu:N", title="GPU"),
        shape=alt.Shape("meets:N", title="meets SLOs"),
        tooltip=["label:N", "source:N", "outcome:N", alt.Tooltip("usd_per_hour:Q", format=".2f"),
                 alt.Tooltip("tok_s_per_user:Q", format=".1f"), alt.Tooltip("output_tok_s_per_gpu:Q", format=".0f")])
    line = alt.Chart(pd.DataFrame(front)).mark_line(color="#444", strokeDash=[4, 3]).encode(
        x="tok_s_per_user:Q", y="output_tok_s_per_gpu:Q")
    return (base + line).properties(width=520, height=320,
                                    title="Throughput per GPU vs speed per user at the question's rate")


def cost_ttft_chart(points: list[dict[str, Any]], front: list[dict[str, Any]], ttft_target: Optional[float]):
    """$ per million output tokens against TTFT p90, with the Pareto front and the TTFT target."""
    import altair as alt
    import pandas as pd

    if not points:
        return None
    data = pd.DataFrame(points).assign(ttft_p90_ms=lambda d: d["ttft_p90_s"] * 1e3)
    front_df = pd.DataFrame(front).assign(ttft_p90_ms=lambda d: d["ttft_p90_s"] * 1e3)
    x = alt.X("ttft_p90_ms:Q", title="TTFT p90 (ms)", scale=alt.Scale(type="log"))
    layers = [alt.Chart(data).mark_point(filled=True, size=70, opacity=0.8).encode(
        x=x, y=alt.Y("usd_per_million_output_tokens:Q", title="$ per million output tokens"),
        color=alt.Color("gpu:N", title="GPU"), shape=alt.Shape("meets:N", title="meets SLOs"),
        tooltip=["label:N", "source:N", "outcome:N", alt.Tooltip("ttft_p90_ms:Q", format=".1f"),
                 alt.Tooltip("usd_per_million_output_tokens:Q", format=".3f")]),
        alt.Chart(front_df).mark_line(color="#444", strokeDash=[4, 3]).encode(
            x="ttft_p90_ms:Q", y="usd_per_million_output_tokens:Q")]
    if ttft_target:
        layers.append(alt.Chart(pd.DataFrame({"t": [ttft_target * 1e3]})).mark_rule(color="#b00020").encode(x="t:Q"))
    return alt.layer(*layers).properties(width=520, height=320, title="Cost vs TTFT p90")


def rate_chart(sweep: list[dict[str, Any]], targets: dict[str, float]):
    """TTFT and ITL percentiles of the chosen deployment against the arrival rate."""
    import altair as alt
    import pandas as pd

    rows = [{"rate": r["rate"], "metric": m.upper(), "percentile": q, "ms": r[f"{m}_{q}"] * 1e3}
            for r in sweep for m in ("ttft", "itl") for q in ("p50", "p90", "p99")
            if r[f"{m}_{q}"] == r[f"{m}_{q}"] and r[f"{m}_{q}"] != float("inf")]
    if not rows:
        return None
    panels = []
    for metric in ("TTFT", "ITL"):
        sub = pd.DataFrame([r for r in rows if r["metric"] == metric])
        if sub.empty:
            continue
        layers = [alt.Chart(sub).mark_line(point=True).encode(
            x=alt.X("rate:Q", title="arrival rate (req/s)"),
            y=alt.Y("ms:Q", title=f"{metric} (ms)", scale=alt.Scale(type="log")),
            color=alt.Color("percentile:N", sort=["p50", "p90", "p99"]),
            tooltip=["rate:Q", "percentile:N", alt.Tooltip("ms:Q", format=".1f")])]
        goals = [{"ms": v * 1e3, "slo": k} for k, v in targets.items() if k.startswith(metric.lower())]
        if goals:
            layers.append(alt.Chart(pd.DataFrame(goals)).mark_rule(color="#b00020", strokeDash=[2, 2]).encode(
                y="ms:Q", tooltip=["slo:N", "ms:Q"]))
        panels.append(alt.layer(*layers).properties(width=330, height=240, title=f"{metric} vs rate"))
    return alt.hconcat(*panels) if panels else None


def cost_chart(configs: list[dict[str, Any]]):
    """Cost of each configuration at the fewest replicas it was found to need (or its last try)."""
    import altair as alt
    import pandas as pd

    if not configs:
        return None
    data = pd.DataFrame(configs[:MAX_CONFIGS])
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("config:N", sort=alt.EncodingSortField("usd_per_hour", order="ascending"), title=None,
                axis=alt.Axis(labelLimit=420)),
        x=alt.X("usd_per_hour:Q", title="$ per hour"),
        color=alt.Color("outcome:N", title="outcome"),
        tooltip=["config:N", "replicas:Q", "gpus:Q", "source:N", "outcome:N",
                 alt.Tooltip("usd_per_hour:Q", format=".2f")],
    ).properties(width=520, height=max(120, 16 * len(data)), title="Cost per configuration")


def failure_chart(rows: list[dict[str, Any]]):
    """Every evaluation: configuration × GPUs, coloured by the first SLO or limit it fails."""
    import altair as alt
    import pandas as pd

    if not rows:
        return None
    data = pd.DataFrame(rows)
    keep = list(dict.fromkeys(sorted(data["config"], key=lambda c: data[data["config"] == c]["usd_per_hour"].min())))
    data = data[data["config"].isin(keep[:MAX_CONFIGS])]
    return alt.Chart(data).mark_point(filled=True, size=90).encode(
        x=alt.X("gpus:Q", title="GPUs (all replicas)", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("config:N", sort=keep[:MAX_CONFIGS], title=None, axis=alt.Axis(labelLimit=420)),
        color=alt.Color("outcome:N", title="first failure"),
        shape=alt.Shape("source:N", title="from"),
        tooltip=["config:N", "replicas:Q", "gpus:Q", "source:N", "outcome:N", "failures:N",
                 alt.Tooltip("usd_per_hour:Q", format=".2f")],
    ).properties(width=520, height=max(120, 16 * data["config"].nunique()),
                 title="Where each candidate fails")
