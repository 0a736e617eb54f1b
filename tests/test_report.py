"""The validation report (perfmodel/validate/report_*.py and its templates) on small synthetic tables:
files, labels, numbers."""

from __future__ import annotations

import itertools
import json
import re
import sys

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("altair")

from perfmodel.validate.report_metrics import (  # noqa: E402
    COLLAPSED_SPLIT, ENGINE_PROCESS_SPLIT, METRICS, TARGETS, mape_table, targets, verdict, verdict_line,
)
from perfmodel.validate.report_pages import write_report  # noqa: E402

TRAIN, HELD = "model-a", "model-b"
CATEGORIES = ("attention", "expert_gemm", "dense_gemm", "norm_elementwise")


def _error(engine: str, model: str, metric: str, batch: int, s: int) -> float:
    """A deterministic relative error, different per engine, split, metric and point."""
    base = {"hf": 0.03, "roofline": -0.4}[engine]
    wobble = ((batch * 7 + s // 64 + METRICS.index(metric) * 3) % 5 - 2) * 0.013
    return base + wobble + (0.02 if model == HELD else 0.0)


def make_points() -> "pd.DataFrame":
    rows = []
    for engine, model, batch, s in itertools.product(("hf", "roofline"), (TRAIN, HELD),
                                                     (1, 16), (128, 512)):
        pid = f"hf|{model}|B={batch}|S={s}|O={s}"
        for metric in METRICS:
            measured = {"ttft": 0.02 * batch * s / 128, "decode_step": 0.004 + 0.0002 * batch,
                        "e2e": 0.5 * s / 128, "throughput": 400.0 * batch}[metric]
            err = _error(engine, model, metric, batch, s)
            rows.append(dict(model=model, batch=batch, input_len=s, output_len=s, point_id=pid,
                             engine=engine, split="train" if model == TRAIN else "held-out",
                             metric=metric, measured=measured, predicted=measured * (1 + err),
                             rel_error=err))
    return pd.DataFrame(rows)


def make_ops(points: "pd.DataFrame") -> "pd.DataFrame":
    rows = []
    keys = points.drop_duplicates(["engine", "point_id"])
    for _, p in keys.iterrows():
        for i, cat in enumerate(CATEGORIES):
            rows.append(dict(model=p["model"], batch=p["batch"], input_len=p["input_len"],
                             output_len=p["output_len"], point_id=p["point_id"], engine=p["engine"],
                             split=p["split"], category=cat,
                             measured_s=None if p["batch"] == 16 and i == 0 else 1e-4 * (i + 1),
                             predicted_s=1.1e-4 * (i + 1)))
    return pd.DataFrame(rows)


def source(mode: str) -> dict:
    return {"mode": mode, "date": "2026-11-28", "gpu": "NVIDIA H200", "driver": "580.159.04",
            "torch": "2.11.0+cu130", "transformers": "5.17.0",
            "results_file": "validate/results/h200-hf.jsonl", "git_commit": "abc1234",
            "calibrated_engine": "hf", "baseline_engine": "roofline",
            "train_models": [TRAIN], "held_out_models": [HELD]}


@pytest.fixture
def no_vl_convert(monkeypatch):
    """Make ``import vl_convert`` fail, so the report takes its CDN path (and stays fast)."""
    monkeypatch.setitem(sys.modules, "vl_convert", None)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """One replay report (CDN path), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("report") / "out"
    points = make_points()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "vl_convert", None)
        html_path, md_path = write_report(points, make_ops(points), out,
                                          title="Synthetic check", source=source("replay"))
    return (points, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"),
            html_path, md_path, out)


def test_files_written(replay):
    _, html, md, html_path, md_path, out = replay
    assert html_path == out / "report.html" and html_path.is_file()
    assert md_path == out / "summary.md" and md_path.is_file()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert md.startswith("# Synthetic check")


def test_replay_is_labelled_replay_never_live(replay):
    _, html, md, *_ = replay
    for text in (html, md):
        assert "replay" in text.lower()
        assert "live run" not in text.lower()
        assert "live" not in text.lower()
        assert "2026-11-28" in text and "NVIDIA H200" in text
        assert "2.11.0+cu130" in text and "5.17.0" in text and "580.159.04" in text
    assert md.splitlines()[2].startswith("**REPLAY of committed measurements")
    assert "class='banner replay'" in html


def test_live_is_labelled_live(tmp_path, no_vl_convert):
    points = make_points()
    html_path, md_path = write_report(points, make_ops(points), tmp_path, title="t",
                                      source=source("live"))
    for text in (html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")):
        assert "LIVE RUN" in text
        assert "replay" not in text.lower()
        assert "live run" in text.lower()


@pytest.mark.parametrize("mode", [None, "", "Replayed", "LIVE?"])
def test_unlabelled_source_is_refused(tmp_path, mode):
    points = make_points()
    src = source("replay")
    src["mode"] = mode
    with pytest.raises(ValueError, match="replay"):
        write_report(points, make_ops(points), tmp_path / "x", title="t", source=src)
    assert not (tmp_path / "x").exists()


def _md_table(md: str, heading_prefix: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_prefix))
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif seen:
            break
    return rows


def test_summary_mape_equals_data(replay):
    points, _, md, *_ = replay
    labels = {"ttft": "TTFT", "decode_step": "Decode step (ITL)", "e2e": "E2E latency",
              "throughput": "Throughput"}
    for split in ("held-out", "train"):
        rows = _md_table(md, f"### {split} ")
        header, body = rows[0], {r[0]: r for r in rows[2:]}
        assert set(body) == set(labels.values())
        for metric, label in labels.items():
            for engine in ("hf", "roofline"):
                sel = points[(points.engine == engine) & (points.split == split)
                             & (points.metric == metric)]
                expected = sel["rel_error"].abs().mean() * 100
                got = float(body[label][header.index(f"{engine} MAPE")])
                assert got == pytest.approx(expected, abs=0.005), (split, metric, engine)
            n = (points[(points.engine == "hf") & (points.split == split)
                        & (points.metric == metric)]).shape[0]
            assert body[label][header.index("points")] == str(n)


def test_mape_table_matches_groupby():
    points = make_points()
    table = mape_table(points)
    assert len(table) == 2 * 2 * len(METRICS)
    for _, row in table.iterrows():
        sel = points[(points.engine == row.engine) & (points.split == row.split)
                     & (points.metric == row.metric)]
        assert row.mape == pytest.approx(sel.rel_error.abs().mean() * 100)
        assert row["max"] == pytest.approx(sel.rel_error.abs().max() * 100)


def test_verdict(replay):
    points, html, md, *_ = replay
    word, checks = verdict(points, "hf")
    assert word == "PASS" and {c[0] for c in checks} == set(TARGETS)
    assert "Verdict: PASS" in md and "Verdict: PASS" in html
    worse = points.copy()
    hit = (worse.engine == "hf") & (worse.split == "held-out") & (worse.metric == "ttft")
    worse.loc[hit, "rel_error"] = 0.5
    assert verdict(worse, "hf")[0] == "FAIL"
    assert verdict(points[points.metric != "ttft"], "hf")[0] == "INCOMPLETE"


def test_targets_per_backend():
    assert targets({"backend": "hf"}) == TARGETS and targets(None) == TARGETS
    vllm = targets({"backend": "vllm"})
    assert vllm["ttft"] == 12.0 and vllm["decode_step"] == TARGETS["decode_step"]


def test_points_set_apart_leave_the_verdict_and_are_reported(tmp_path, no_vl_convert):
    """Held-out points moved to a split of their own (their routing collapsed; an engine core in a
    process of its own) do not count in the verdict, and the report shows them with their MAPE."""
    points = make_points()
    bad = points[(points.model == HELD) & (points.batch == 16) & (points.input_len == 128)].copy()
    bad["point_id"] = bad["point_id"] + "|collapsed"
    bad["rel_error"] = 2.0
    bad["split"] = COLLAPSED_SPLIT
    engine = bad.copy()
    engine["point_id"] = engine["point_id"] + "|mp"
    engine["rel_error"] = -0.6
    engine["split"] = ENGINE_PROCESS_SPLIT
    both = pd.concat([points, bad, engine], ignore_index=True)
    assert verdict(both, "hf")[0] == "PASS"
    line = verdict_line(both, "hf")
    assert line.startswith("Verdict: PASS")
    assert f"Apart ('{COLLAPSED_SPLIT}'): 1 held-out points" in line and "Throughput 200.0%" in line
    assert f"Apart ('{ENGINE_PROCESS_SPLIT}'): 1 held-out points" in line and "Throughput 60.0%" in line
    counted = both.copy()
    counted.loc[counted.split != "train", "split"] = "held-out"  # the same points, none set apart
    assert verdict(counted, "hf")[0] == "FAIL"
    _, md_path = write_report(both, make_ops(points), tmp_path, title="t", source=source("replay"))
    md = md_path.read_text(encoding="utf-8")
    rows = _md_table(md, f"### {COLLAPSED_SPLIT} ({HELD})")
    assert [r[0] for r in rows[2:]] == ["TTFT", "Decode step (ITL)", "E2E latency", "Throughput"]
    assert all(r[1] == "200.00" and r[-1] == "–" for r in rows[2:])
    assert f"### {ENGINE_PROCESS_SPLIT} ({HELD})" in md
    assert "### held-out, routing collapsed" not in _write_plain(tmp_path / "plain")


def _write_plain(out) -> str:
    """The summary of the synthetic points alone: no split set apart, so none is shown."""
    points = make_points()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "vl_convert", None)
        _, md_path = write_report(points, make_ops(points), out, title="t", source=source("replay"))
    return md_path.read_text(encoding="utf-8")


def test_worst_held_out_points(replay):
    points, _, md, *_ = replay
    rows = _md_table(md, "## The 10 worst held-out points")
    body = rows[2:]
    assert len(body) == 4  # the held-out model has 4 points
    assert all(r[0] == HELD for r in body)
    hf = points[(points.engine == "hf") & (points.split == "held-out")]
    worst = hf.groupby("point_id")["rel_error"].apply(lambda e: e.abs().max()).max() * 100
    assert max(abs(float(c)) for r in body for c in r[4:8]) == pytest.approx(worst, abs=0.05)


def _specs(html: str) -> dict:
    match = re.search(r"var specs = (\{.*?\});\n", html, re.S)
    assert match, "no chart specs in the page"
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_html_has_each_metric_chart_section(replay):
    _, html, *_ = replay
    specs = _specs(html)
    for metric in METRICS:
        assert f"id='metric-{metric}'" in html
        for kind in ("scatter", "error"):
            div = f"chart-{kind}-{metric}"
            assert f"id='{div}'" in html
            assert "$schema" in specs[div] and "vega-lite" in specs[div]["$schema"]
    assert "chart-ops" in specs
    scatter = json.dumps(specs["chart-scatter-ttft"])
    assert "roofline (uncalibrated baseline)" in scatter and "hf (calibrated)" in scatter
    assert '"type": "log"' in scatter
    # The tables: MAPE and every point.
    assert "<table class='mape'>" in html and "<table class='sortable points'>" in html
    assert html.count("<tr>") >= 2 * 4 * len(METRICS)


def test_cdn_fallback_says_so(replay):
    _, html, *_ = replay
    assert "cdn.jsdelivr.net" in html
    assert "offline, the charts do not render" in html
    assert "Chart not rendered" in html  # placeholder left visible if the scripts fail


def test_inlined_javascript_when_vl_convert_is_installed(tmp_path):
    pytest.importorskip("vl_convert")
    points = make_points()
    html_path, _ = write_report(points, make_ops(points), tmp_path, title="t",
                                source=source("replay"))
    html = html_path.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src" not in html
    assert "window.vegaEmbed" in html
    assert "the page needs no network" in html


# --- point identity: hypothetical variants of one model ----------------------------------------

WHATIF = "validate/results/h200-hf-whatif.jsonl"


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The committed what-if variants of the seed's sweep (one model, --set and --layers, S = O =
    512) with transformers' grouped_mm experts, compared under two engines, with the reports
    written (CDN path) and the terminal table rendered."""
    from rich.console import Console

    from perfmodel.paths import ROOT
    from perfmodel.validate.terminal import print_validation
    from perfmodel.measuring.compare import compare, is_variant, load_measurements, mape, row_moe_impl

    rows = [r for r in load_measurements(ROOT / WHATIF)  # the sweep's S = O = 512, grouped_mm experts
            if r.get("status") == "ok" and is_variant(r) and row_moe_impl(r) == "fused" and r["input_len"] == 512]
    out = tmp_path_factory.mktemp("variants")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERFMODEL_CACHE_DIR", str(out / "cache"))
        mp.setitem(sys.modules, "vl_convert", None)
        points = pd.concat([compare(rows, engine=e, train_models=[rows[0]["model"]])[0]
                            for e in ("hf", "roofline")], ignore_index=True)
        src = dict(source("replay"), train_models=[rows[0]["model"]], held_out_models=[])
        html_path, md_path = write_report(points, None, out / "report", title="Variants", source=src)
    console = Console(record=True, width=400, color_system=None)
    print_validation({"source": {**src, "mode": "replay"}, "points": points.to_dict(orient="records"),
                      "mape": mape(points).to_dict(orient="records"), "report_html": "r.html",
                      "summary_md": "s.md"}, console)
    return (rows, points, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"),
            console.export_text())


def _expected(row: dict, engine: str) -> dict:
    """Measured and predicted metrics of one results row, predicted through --set overrides."""
    from perfmodel.prediction import predict
    from perfmodel.measuring.compare import METRIC_FIELDS, row_overrides

    p = predict(row["model"], engine=engine, batch=row["batch"], input_len=row["input_len"],
                output_len=row["output_len"], overrides=row_overrides(row))
    return {metric: (row[field] * scale, p.metrics[name])
            for metric, (field, scale, name) in METRIC_FIELDS.items()}


def test_variants_are_distinct_points_with_their_own_numbers(variants):
    rows, points, *_ = variants
    assert len(rows) == 30 and len({r["point_id"] for r in rows}) == 30
    assert len({r["model"] for r in rows}) == 1  # one model: its name alone cannot tell them apart
    hf = points[points["engine"] == "hf"]
    assert hf["point_id"].nunique() == 30
    assert hf.groupby(["variant", "batch"]).ngroups == 30
    assert set(hf["split"]) == {"held-out"}
    for row in rows:
        for engine in ("hf", "roofline"):
            expected = _expected(row, engine)
            got = points[(points["engine"] == engine) & (points["point_id"] == row["point_id"])]
            assert len(got) == len(METRICS)
            for _, r in got.iterrows():
                measured, predicted = expected[r["metric"]]
                assert r["measured"] == pytest.approx(measured, rel=1e-12)
                assert r["predicted"] == pytest.approx(predicted, rel=1e-12)


def test_variant_labels_name_layers_experts_top_k_and_ffn(variants):
    rows, points, *_ = variants
    labels = dict(zip(points["point_id"], points["variant"]))
    for row in rows:
        config = {k: int(v) for k, v in (o.split("=") for o in row["overrides"])}
        label = labels[row["point_id"]]
        assert label.startswith(f"{row['model']} [L={row['layers']} ")
        assert f" E={config.get('num_experts', row['num_experts'])} " in label
        assert f" k={config.get('top_k', row['top_k'])} " in label
        if "ffn" in config:
            assert label.endswith(f" F={config['ffn']}]")
    assert len(set(labels.values())) == 10  # ten variants, each at three batch sizes


def test_variant_label_of_plain_points_and_settings():
    from perfmodel.measuring.compare import variant_label

    plain = {"model": "olmoe-1b-7b", "overrides": [], "layers": None,
             "point_id": "hf|olmoe-1b-7b|set=|layers=all|B=1|S=8|O=8|experts=grouped_mm|dtype=bfloat16|graphs=1|full=0"}
    assert variant_label(plain) == "olmoe-1b-7b"
    eager = dict(plain, point_id=plain["point_id"].replace("graphs=1", "graphs=0").replace("bfloat16", "float16"))
    assert variant_label(eager) == "olmoe-1b-7b [dtype=float16 graphs=0]"
    wider = dict(plain, overrides=["hidden_size=1024", "top_k=2"])
    assert variant_label(wider) == "olmoe-1b-7b [L=16 E=64 k=2 F=1024 hidden_size=1024]"


def test_terminal_table_has_one_row_per_variant_and_metric(variants):
    from perfmodel.report_terminal import format_time as _time

    _, points, _, _, text = variants
    hf, base = points[points["engine"] == "hf"], points[points["engine"] == "roofline"]
    lines = [line for line in text.splitlines() if "mixtral-8x7b [" in line]
    assert len(lines) == 30 * len(METRICS)
    seen = set()
    for line in lines:
        cells = [c.strip() for c in line.strip("│|┃ ").split("│")]
        variant, batch, metric = cells[0], int(cells[1]), cells[4]
        seen.add((variant, batch, metric))
        fmt = (lambda v: f"{v:,.0f}") if metric == "throughput" else _time
        sel = (hf["variant"] == variant) & (hf["batch"] == batch) & (hf["metric"] == metric)
        assert sel.sum() == 1, (variant, batch, metric)
        r = hf[sel].iloc[0]
        b = base[(base["point_id"] == r["point_id"]) & (base["metric"] == metric)].iloc[0]
        assert cells[5:8] == [fmt(r["measured"]), fmt(r["predicted"]), fmt(b["predicted"])], line
        assert cells[8:10] == [f"{r['rel_error']:+.1%}", f"{b['rel_error']:+.1%}"], line
    assert len(seen) == 30 * len(METRICS)


def _html_points_rows(html: str) -> list[list[str]]:
    table = html.split("<table class='sortable points'>", 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [re.findall(r'data-v="([^"]*)"', tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def test_html_points_table_shows_each_variant_beside_its_numbers(variants):
    import html as html_lib

    _, points, page, *_ = variants
    hf = points[points["engine"] == "hf"].set_index(["variant", "batch", "metric"])
    rows = _html_points_rows(page)
    assert len(rows) == 30 * len(METRICS)
    seen = set()
    for cells in rows:
        variant, batch, metric = html_lib.unescape(cells[0]), int(cells[1]), cells[4]
        seen.add((variant, batch))
        r = hf.loc[(variant, batch, metric)]
        scale = 1.0 if metric == "throughput" else 1e3
        assert float(cells[6]) == pytest.approx(r["measured"] * scale, rel=1e-9)
        assert float(cells[7]) == pytest.approx(r["predicted"] * scale, rel=1e-9)
    assert len(seen) == 30 and all("[L=8 E=" in v for v, _ in seen)


def test_markdown_worst_points_name_the_variant(variants):
    _, points, _, md, _ = variants
    hf = points[points["engine"] == "hf"]
    rows = _md_table(md, "## The 10 worst held-out points")[2:]
    assert len(rows) == 10
    labels = [m for m in METRICS if m in set(hf["metric"])]
    for r in rows:
        assert r[0].startswith("mixtral-8x7b [L=8 E=")
        for metric, cell in zip(labels, r[4:4 + len(labels)]):
            sel = hf[(hf["variant"] == r[0]) & (hf["batch"] == int(r[1])) & (hf["metric"] == metric)]
            assert len(sel) == 1
            assert float(cell) == pytest.approx(sel["rel_error"].iloc[0] * 100, abs=0.051)


# --- templates: files shipped in the wheel, copied into the page as they are ------------------

def test_templates_are_package_data_and_jinja2_a_dependency():
    import tomllib

    from perfmodel.paths import ROOT

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    for name, expected in (("perfmodel.validate", {"report.html.j2", "summary.md.j2", "report.css",
                                                   "banner-replay.css", "banner-live.css"}),
                           ("perfmodel", {"base.css", "report.js"})):  # shared by every report
        package = ROOT.joinpath(*name.split("."))
        files = {p for p in (package / "templates").iterdir() if p.is_file()}
        assert {p.name for p in files} >= expected
        assert files <= {p for g in package_data[name] for p in package.glob(g)}
    assert any(d.replace(" ", "").lower().startswith("jinja2") for d in pyproject["project"]["dependencies"])


def test_style_and_script_files_are_copied_into_the_page(replay):
    from perfmodel.paths import ROOT

    _, html, *_ = replay
    folder, shared = ROOT / "perfmodel" / "validate" / "templates", ROOT / "perfmodel" / "templates"
    for path in (folder / "report.css", folder / "banner-replay.css", shared / "base.css", shared / "report.js"):
        assert path.read_text(encoding="utf-8") in html, path.name
    assert (folder / "banner-live.css").read_text(encoding="utf-8") not in html


def test_text_is_escaped_in_the_page(tmp_path, no_vl_convert):
    points = make_points()
    src = dict(source("replay"), gpu="<b>GPU</b> & co")
    html_path, md_path = write_report(points, make_ops(points), tmp_path, title="<script>x</script>",
                                      source=src)
    page = html_path.read_text(encoding="utf-8")
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>GPU</b>" not in page and "&lt;b&gt;GPU&lt;/b&gt; &amp; co" in page
    assert md_path.read_text(encoding="utf-8").startswith("# <script>x</script>\n")  # Markdown: as given


def test_one_prefill_by_op_category_is_in_both_pages(tmp_path, no_vl_convert):
    """Given the profiled prefills' kernels by category, the Markdown and the HTML page both
    show the ratios per split and the held-out prefills with the largest TTFT error."""
    points = make_points()
    ids = points.loc[points.engine == "hf", ["point_id", "split"]].drop_duplicates()
    prefill = pd.DataFrame([
        {"model": HELD, "variant": HELD, "batch": 1, "input_len": 128, "output_len": 128, "point_id": pid,
         "category": category, "measured_s": measured, "predicted_s": 1e-3, "split": split}
        for pid, split in zip(ids.point_id, ids.split)
        for category, measured in (("attention", 2.5e-3), ("expert_gemm", 1e-3))])
    html_path, md_path = write_report(points, make_ops(points), tmp_path, title="t", source=source("replay"),
                                      prefill=prefill)
    md, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    rows = _md_table(md, "## One prefill by op category")
    assert ["held-out", "attention", "4", "2.50", "2.50–2.50"] in rows
    assert ["train", "expert_gemm", "4", "1.00", "1.00–1.00"] in rows
    assert "<section id='prefill'>" in html and "<td>2.50</td>" in html
    _, plain_md = write_report(points, make_ops(points), tmp_path / "none", title="t", source=source("replay"))
    assert "One prefill by op category" not in plain_md.read_text(encoding="utf-8")
