"""``perfmodel plan``: the search, the answer, the report and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.planning.candidates import Engine, Evaluation, Pool
from perfmodel.planning.question import Lengths, Traffic, build_question
from perfmodel.planning.search import choose, layouts, run_search
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import load_model

EXACT = ["plan", "mixtral", "--rate", "20", "--input-len", "1024", "--output-len", "256",
         "--ttft-p90", "1.0", "--itl-p90", "0.05", "--gpu", "h100,h200"]


def _run(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_exact_command_answers_and_writes_the_report(tmp_path, capsys):
    code, out, err = _run(EXACT + ["--out", str(tmp_path / "plan"), "--json"], capsys)
    assert code == 0, err  # how long it takes: benchmarks/plan_speed.py
    data = json.loads(out)
    chosen = data["chosen"]
    assert chosen["gpu"] in ("h100-sxm", "h200-sxm") and chosen["gpus"] >= 1
    assert set(chosen["layout"]) == {"tp", "ep", "pp", "dp", "expert_parallel"} and chosen["dtype"] == "bf16"
    assert chosen["max_num_seqs"] in (64, 128, 256) and chosen["replicas"] >= 1
    assert chosen["source"] == "simulation"
    for m in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
        assert set(data["latency"][m]) == {"p50", "p90", "p99", "mean"}
        assert data["latency"][m]["p50"] <= data["latency"][m]["p90"] <= data["latency"][m]["p99"]
    assert data["latency"]["ttft_s"]["p90"] <= 1.0 and data["latency"]["itl_s"]["p90"] <= 0.05
    cost = data["cost"]
    assert cost["usd_per_hour"] == pytest.approx(sum(p["usd_per_hour"] for p in chosen["pools"]))
    # $/Mtok = $/h over the output tokens of an hour at 20 req/s × 256 tokens
    assert cost["usd_per_million_output_tokens"] == pytest.approx(cost["usd_per_hour"] / (20 * 256 * 3600 / 1e6))
    assert data["throughput"]["output_tokens_per_s"] == pytest.approx(20 * 256)
    assert 0.9 <= data["goodput"]["fraction"] <= 1.0
    assert all(v["headroom"] >= 0 for v in data["margins"]["slo"].values())
    profiles = data["profile"]
    # each GPU's own vllm fit (the H100's anchored on the H200's), calibrated on it
    assert profiles and all(p["profile"] == f"{p['gpu']}-vllm" and p["error_band_note"] for p in profiles)
    assert all(p["serving_error_band_note"] for p in profiles)
    assert all(p["note"] == f"calibrated on {p['gpu']}" and not p["transfer"] for p in profiles)
    assert any("not yet validated on real multi-GPU runs" in c for c in data["caveats"])
    noise = [c for c in data["caveats"] if "launch noise" in c]  # once per GPU type, whatever its pools
    assert len(noise) == len({p["gpu"] for p in profiles}) and all("one seeded draw per candidate" in c for c in noise)
    lo, hi = profiles[0]["launch_factor_p10_p90"]
    assert lo < 1.0 < hi and lo * hi == pytest.approx(1.0, rel=1e-6)
    # a launched step's serial host time, for the step and for each further sequence it holds
    assert all(p["launch_serial_s"] > 0 and 0 < p["launch_serial_seq_s"] < p["launch_serial_s"] for p in profiles)
    front = data["frontier"]["throughput_vs_interactivity"]
    assert front and all(p["output_tok_s_per_gpu"] > 0 for p in front)
    per_user = [p["tok_s_per_user"] for p in front]
    assert per_user == sorted(per_user, reverse=True)  # a Pareto front: one goes up as the other goes down
    assert len(data["rate_sweep"]) >= 5
    html = (tmp_path / "plan" / "report.html").read_text()
    md = (tmp_path / "plan" / "summary.md").read_text()
    for div in ("chart-frontier", "chart-cost-ttft", "chart-rate", "chart-cost", "chart-failures"):
        assert f"id='{div}'" in html and f'"{div}"' in html
    assert chosen["label"].split(" ")[1] in html and "| TTFT |" in md and "## Caveats" in md


def test_infeasible_slo_exits_1_with_what_failed(tmp_path, capsys):
    code, out, err = _run(["plan", "mixtral", "--rate", "20", "--ttft-p90", "0.001", "--gpu", "h200",
                           "--max-gpus", "4", "--no-disagg", "--json"], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("perfmodel: no configuration meets the SLOs")
    assert "ttft_p90" in lines[0] and "Traceback" not in err
    data = json.loads(out)
    assert data["chosen"] is None and "ttft_p90" in data["infeasible"]


def test_an_overloaded_search_names_the_configuration_that_serves_most(capsys):
    """Where every configuration is overloaded, the one line names the one that takes the highest
    rate and that rate, and --json gives it as ``closest``."""
    code, out, err = _run(["plan", "mixtral-8x7b", "--rate", "12", "--input-len", "1024", "--output-len", "256",
                           "--ttft-p90", "1", "--itl-p90", "0.1", "--gpu", "h200", "--dtype", "bf16",
                           "--max-gpus", "1", "--no-disagg", "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    rates = [r["max_rate_req_s"] for r in data["candidates"]["rejected"]]
    closest = data["closest"]
    assert closest["max_rate_req_s"] == max(rates) < 12
    assert closest["label"].startswith("1× h200-sxm bf16") and closest["source"] == "closed form"
    assert err.strip().endswith(f"closest: {closest['label']}, which takes at most {max(rates):.3g} req/s")
    assert "within 1 GPU of h200" in err


#: The committed traffic files.
TRAFFIC = Path(__file__).resolve().parent.parent / "validate" / "traffic"

BAD = [
    ("transformers' engine", ["plan", "mixtral", "--rate", "5", "--engine", "hf"],
     "plan simulates vLLM's continuous batching"),
    ("empty list item", ["plan", "mixtral", "--rate", "5", "--gpu", "h200,,h100"],
     "--gpu 'h200,,h100': an empty value between commas"),
    ("repeated list item", ["plan", "mixtral", "--rate", "5", "--dtype", "bf16,bf16"], "gives bf16 more than once"),
    ("empty list", ["plan", "mixtral", "--rate", "5", "--max-num-seqs", ""], "--max-num-seqs needs at least one"),
    ("lengths twice", ["plan", "mixtral", "--rate", "5", "--lengths-file", str(TRAFFIC / "chat-rag-mix.csv"),
                       "--input-len", "5"], "input_len (--input-len) would be ignored"),
    ("negative rate", ["plan", "mixtral", "--rate", "-1"], "greater than 0"),
    ("no rate", ["plan", "mixtral"], "no arrival rate"),
    ("unknown gpu", ["plan", "mixtral", "--rate", "5", "--gpu", "h999"], "unknown GPU 'h999'"),
    ("gpu without a price", ["plan", "mixtral", "--rate", "5", "--gpu", "l40s"], "no price for GPU 'l40s'"),
    ("unknown dtype", ["plan", "mixtral", "--rate", "5", "--dtype", "fp7"], "unknown dtype 'fp7'"),
    ("bad length", ["plan", "mixtral", "--rate", "5", "--input-len", "abc"], "bad --input-len"),
    ("bad percentile", ["plan", "mixtral", "--rate", "5", "--input-len", "p50=100,p80=300"], "unknown percentile"),
    ("negative slo", ["plan", "mixtral", "--rate", "5", "--itl-p90", "-0.1"], "itl_p90"),
    ("seqs above budget", ["plan", "mixtral", "--rate", "5", "--max-num-seqs", "9000"], "max-batched-tokens"),
    ("unknown model", ["plan", "nosuchmodel", "--rate", "5"], "nosuchmodel"),
    ("length beyond any context", ["plan", "mixtral", "--rate", "5", "--input-len", "1e30"], "from 1 to 10,000,000"),
    ("percentile beyond any context", ["plan", "mixtral", "--rate", "5", "--input-len", "p50=1,p90=1e300"],
     "percentile p90 must be a number of tokens"),
    ("fractional percentile", ["plan", "mixtral", "--rate", "5", "--output-len", "p50=0.5,p90=0.9"],
     "percentile p50 must be a number of tokens"),
    ("not-a-number percentile", ["plan", "mixtral", "--rate", "5", "--input-len", "p50=nan,p90=1"], "got nan"),
    ("huge step budget", ["plan", "mixtral", "--rate", "5", "--max-batched-tokens", "99999999999999999999"],
     "max_batched_tokens"),
    ("negative seed", ["plan", "mixtral", "--rate", "5", "--seed", "-1"], "simulation.seed"),
    ("zero burstiness", ["plan", "mixtral", "--rate", "5", "--burstiness", "0"], "traffic.burstiness"),
    ("infinite burstiness", ["plan", "mixtral", "--rate", "5", "--burstiness", "inf"], "traffic.burstiness"),
    ("probe under a profile without a host-speed fit",
     ["plan", "mixtral", "--rate", "5", "--engine", "roofline", "--host-probe-ms", "5"], "no host-speed fit"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2(argv, fragment, capsys):
    code, out, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("perfmodel: error:"), err
    assert fragment in lines[0] and "Traceback" not in err + out


@pytest.mark.parametrize("content, fragment", [
    ("model: mixtral\ntraffic: {rate: 20\n", "malformed YAML"),
    ("model: mixtral\ntraffic: {rate: [1, 2}\n", "while parsing a flow sequence (line 2, column 22)"),
    ("- just\n- a list\n", "expected a mapping"),
    ("model: mixtral\ntraffic: 5\n", "traffic must be a mapping (rate, burstiness, input_len, output_len, lengths_file), got 5"),
    ("model: mixtral\ntraffic: {rate: 5, input_len: 0}\n",
     "a token count must be an integer from 1 to 10,000,000, got 0"),
    ("model: mixtral\ntraffic: {rate: 5}\nsurprise: 1\n", "surprise"),
    ("model: mixtral\ntraffic: {rate: 5, lengths_file: missing.csv}\n", "cannot read lengths file"),
    ("model: mixtral\nmodel: qwen3-30b-a3b\ntraffic: {rate: 5}\n", "key 'model' given twice (line 2, column 1)"),
    ("model: mixtral\ntraffic: {rate: 5}\n1: 2\n", "unknown key 1"),
    ("model: mixtral\nrate: 5\n", "'rate' belongs under 'traffic:'"),
    ("model: mixtral\ntraffic: {rate: 5}\nttft_p90: 1\n", "'ttft_p90' belongs under 'slo:'"),
    ("model: mixtral\ntraffic: {rate: 5}\nmax_gpus: 8\n", "'max_gpus' belongs under 'search:'"),
    ("model: mixtral\ntraffic: {rate: 5}\nsearch: {max_gpus: 1000000}\n", "search.max_gpus"),
    ("model: mixtral\ntraffic: {rate: 5, input_len: true}\n", "not true/false"),
    ("model: mixtral\ntraffic: {rate: 5, burstiness: -1}\n", "traffic.burstiness"),
    ("model: mixtral\ntraffic: {rate: 5, input_len: {p50: a, p90: 2}}\n", "percentile p50 must be a number"),
])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, content, fragment):
    path = tmp_path / "plan.yaml"
    path.write_text(content)
    code, out, err = _run(["plan", "--config", str(path)], capsys)
    assert code == 2 and err.startswith("perfmodel: error:") and fragment in err and err.count("\n") == 1


def test_bad_price_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "prices.yaml"
    path.write_text("gpus:\n  h200-sxm: {usd_per_gpu_hour: -3, source: x, date: y}\n")
    code, _, err = _run(["plan", "mixtral", "--rate", "5", "--gpu", "h200", "--prices", str(path)], capsys)
    assert code == 2 and "usd_per_gpu_hour" in err and err.count("\n") == 1


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": "mixtral", "traffic": {"rate": 5, "input_len": 512},
                                    "slo": {"ttft_p90": 2.0}, "search": {"gpus": ["h200"]}}))
    q = build_question(path, {"traffic": {"rate": 20}, "slo": {"itl_p90": 0.05}})
    assert q.traffic.rate == 20 and q.traffic.input_len == 512
    assert q.slo.targets() == {"ttft_p90": 2.0, "itl_p90": 0.05}
    assert q.search.gpus == ["h200"]


def test_the_shipped_example_question_reads_and_a_flag_overrides_it():
    """specs/plans/ holds the planning question the README runs (``plan --config``): it reads as a
    whole question, and --rate replaces its rate and nothing else."""
    from perfmodel.paths import SPECS_DIR

    q = build_question(SPECS_DIR / "plans" / "mixtral-chat.yaml", {"traffic": {"rate": 40}})
    assert q.model == "mixtral-8x7b" and q.traffic.rate == 40
    assert q.traffic.input_len == {"p50": 512, "p90": 2048}
    assert q.slo.targets() == {"ttft_p90": 1.0, "itl_p90": 0.05}
    assert q.search.dtypes == ["bf16", "fp8"]


def test_two_pools_on_one_gpu_type_print_their_profile_once(capsys):
    """A disaggregated answer whose pools share a GPU type and profile prints one profile line
    naming both pools, and no caveat twice."""
    from perfmodel.paths import SPECS_DIR

    code, out, _ = _run(["plan", "--config", str(SPECS_DIR / "plans" / "mixtral-chat.yaml"), "--rate", "100",
                         "--gpu", "h100", "--dtype", "fp8", "--no-expert-parallel"], capsys)
    assert code == 0 and "(disaggregated)" in out.splitlines()[1]
    profile_lines = [line for line in out.splitlines() if line.startswith("profile (")]
    assert len(profile_lines) == 1 and "prefill pool, h100-sxm; decode pool, h100-sxm" in profile_lines[0]
    caveats = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(caveats) == len(set(caveats))


def test_a_question_files_relative_paths_are_from_its_folder(tmp_path, monkeypatch):
    """lengths_file, prices and a model's config.json named in a question file are found beside
    the file wherever the command runs; a model name stays a name."""
    import json as json_

    from perfmodel.specs.zoo import load_hf_config

    folder = tmp_path / "question"
    folder.mkdir()
    (folder / "lengths.csv").write_text("100,10\n")
    (folder / "model.json").write_text(json_.dumps(load_hf_config("olmoe-1b-7b")))
    (folder / "plan.yaml").write_text(yaml.safe_dump({"model": "model.json", "prices": "prices.yaml",
                                                      "traffic": {"rate": 5, "lengths_file": "lengths.csv"}}))
    monkeypatch.chdir(tmp_path)
    q = build_question(folder / "plan.yaml", {})
    assert Path(q.model) == folder / "model.json" and q.prices == folder / "prices.yaml"
    assert q.traffic.lengths_file == folder / "lengths.csv"
    (folder / "plan.yaml").write_text(yaml.safe_dump({"model": "mixtral", "traffic": {"rate": 5}}))
    assert build_question(folder / "plan.yaml", {}).model == "mixtral"


def _mixtral_at(rate: float, **search):
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search

    q = PlanQuestion(model="mixtral-8x7b", traffic={"rate": rate, "input_len": 1024, "output_len": 256},
                     slo={"ttft_p90": 1.0, "itl_p90": 0.05}, search={"gpus": ["h100", "h200"], **search},
                     simulation={"requests": 120, "warmup": 40})
    return run_search(q)


def test_disaggregated_pools_share_a_link_or_are_not_built():
    """Without the network's bandwidth, a pair's pools are one GPU type within one NVLink domain
    (an H100 pool and an H200 pool share none); given it, pairs of two types are tried, and a
    link too slow for the traffic overloads the pair rather than adding a fixed delay."""
    plan = _mixtral_at(20)
    pairs = [ev for ev in plan.evaluations if ev.kind == "disaggregated"]
    assert pairs and all(len({p.engine.gpu for p in ev.pools}) == 1 for ev in pairs)
    assert all(ev.gpus <= 8 for ev in pairs)
    slow = _mixtral_at(20, kv_link_gb_s=0.2)
    pairs = [ev for ev in slow.evaluations if ev.kind == "disaggregated"]
    assert pairs and all(ev.details["kv_link_utilization"] > 1 for ev in pairs)
    assert all(not ev.stable and ev.failures[0] == "overloaded (the KV link)" for ev in pairs)
    assert slow.chosen is not None and slow.chosen.kind == "colocated"


def test_the_kv_links_wait_is_the_md1_queues():
    """ρ·t/(2(1 − ρ)) before a transfer of t seconds at utilisation ρ of the busier end."""
    from types import SimpleNamespace

    from perfmodel.planning import disagg

    search = SimpleNamespace()
    setups = {"p": 0.002, "d": 0.004}  # one share's seconds on each end
    disagg_transfer, disagg.transfer_s = disagg.transfer_s, lambda s, setup: setups[setup]
    try:
        link = disagg.kv_link(search, "p", 2, "d", 1, rate=125.0)  # ends busy 0.125 and 0.5 of the time
    finally:
        disagg.transfer_s = disagg_transfer
    assert link["transfer_s"] == 0.004 and link["utilization"] == pytest.approx(0.5)
    assert link["wait_s"] == pytest.approx(0.5 * 0.004 / (2 * 0.5))


def test_a_tie_in_cost_goes_to_the_most_headroom():
    """Configurations as cheap as the cheapest are simulated, and the answer is the one of them
    furthest from its targets (Mixtral at 5 req/s: a 2-GPU layout, not the first one found)."""
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search

    q = PlanQuestion(model="mixtral-8x7b", traffic={"rate": 5, "input_len": 1024, "output_len": 256},
                     slo={"ttft_p90": 1.0, "itl_p90": 0.05}, search={"gpus": ["h100"], "disaggregation": False})
    plan = run_search(q)
    same = [ev for ev in plan.evaluations if ev.source == "simulation" and ev.meets
            and ev.usd_per_hour == pytest.approx(plan.chosen.usd_per_hour) and ev.gpus == plan.chosen.gpus]
    assert len(same) > 1
    assert max(plan.chosen.ratios.values()) == min(max(ev.ratios.values()) for ev in same)


def test_a_checkpoint_stored_quantized_is_planned_under_its_schemes_name():
    """DeepSeek-V3's checkpoint is fp8 in blocks: --dtype bf16 runs it so, and the answer says
    fp8-block (not bf16, which does not fit the GPUs it names); --dtype none is the model in bf16."""
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import Search, stored_choices
    from perfmodel.specs.model import load_model

    assert stored_choices(load_model("deepseek-v3"), ["bf16", "fp8-block", "fp8", "none"]) == [
        "fp8-block", "fp8", "none"]
    assert stored_choices(load_model("mixtral-8x7b"), ["bf16", "fp8"]) == ["bf16", "fp8"]
    q = PlanQuestion(model="deepseek-v3", traffic={"rate": 1}, search={"gpus": ["h200"], "dtypes": ["bf16"]})
    assert Search(q).q.search.dtypes == ["fp8-block"]


def test_an_answer_near_its_limit_says_so(capsys):
    """The README's percentile example on one H100: at the highest rate the plan still answers
    (ITL p50 30 ms met while most requests' own TPOT is above it, the KV cache filling), the
    answer's caveats say it runs near its limit, and why; well below it, they do not."""
    def plan(rate):
        code, out, _ = _run(["plan", "qwen3-30b-a3b", "--rate", str(rate), "--input-len", "p50=800,p90=3000",
                             "--output-len", "p50=200,p90=600", "--ttft-p99", "2", "--itl-p50", "0.03",
                             "--gpu", "h100", "--max-gpus", "1", "--json"], capsys)
        return code, json.loads(out)

    answered = [(rate, data) for rate in (5, 6, 6.5, 7, 7.25, 7.5, 7.75, 8, 8.5, 9, 10)
                for code, data in [plan(rate)] if code == 0 and data.get("chosen")]
    assert answered and answered[-1][0] < 10  # the limit lies within the rates tried
    data = answered[-1][1]
    (near,) = [c for c in data["caveats"] if c.startswith("The chosen deployment runs near its limit")]
    if data["goodput"]["fraction"] < 0.5:
        assert f"only {data['goodput']['fraction']:.0%} of requests meet their own" in near
    relaxed = json.loads(_run(["plan", "qwen3-30b-a3b", "--rate", "1", "--ttft-p90", "5", "--itl-p90", "0.2",
                               "--json"], capsys)[1])
    assert not [c for c in relaxed["caveats"] if "near its limit" in c]


def test_lengths_from_percentiles_and_from_a_file(tmp_path):
    import numpy as np

    lengths = Lengths(Traffic(rate=1, input_len={"p50": 500, "p90": 2000}, output_len=100))
    s, o = lengths.sample(20_000, np.random.default_rng(0))
    assert np.median(s) == pytest.approx(500, rel=0.05)
    assert np.percentile(s, 90) == pytest.approx(2000, rel=0.08)
    assert set(o.tolist()) == {100}
    csv = tmp_path / "lengths.csv"
    csv.write_text("input,output\n100,10\n300,30\n")
    s, o = Lengths(Traffic(rate=1, lengths_file=csv)).sample(1000, np.random.default_rng(0))
    assert set(zip(s.tolist(), o.tolist())) == {(100, 10), (300, 30)}
    # a spreadsheet's byte-order mark does not eat the first row
    csv.write_bytes(b"\xef\xbb\xbf1000,50\n100,50\n")
    s, _ = Lengths(Traffic(rate=1, lengths_file=csv)).sample(1000, np.random.default_rng(0))
    assert set(s.tolist()) == {1000, 100}


@pytest.mark.parametrize("content, fragment", [
    ("1e20,5\n", "integers from 1 to 10,000,000"),
    ("1" * 140_000 + ",5\n", "not CSV: field larger than field limit"),
])
def test_a_lengths_file_out_of_range_is_one_line(tmp_path, content, fragment):
    from perfmodel.errors import InputError
    from perfmodel.planning.question import read_lengths_file

    path = tmp_path / "lengths.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=fragment):
        read_lengths_file(path)


def test_a_length_flag_replaces_the_config_files_percentiles(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": "mixtral", "traffic": {"rate": 5, "input_len": {"p50": 100, "p99": 200}}}))
    q = build_question(path, {"traffic": {"input_len": {"p50": 300.0, "p90": 400.0}}})
    assert q.traffic.input_len == {"p50": 300.0, "p90": 400.0}  # not merged into p50/p90/p99


def test_layouts_are_the_valid_ones():
    found = layouts(load_model("mixtral"), gpus_per_node=8, max_gpus=4)
    assert Layout(1, 1, 1) in found and Layout(2, 2, 1) in found and Layout(1, 1, 4) in found
    assert all(layout.gpus in (1, 2, 4) for layout in found)
    assert Layout(1, 8, 1) not in found  # 8 GPUs: above max_gpus


def _evaluation(gpu, usd, meets, gpus=1, source="simulation"):
    engine = Engine(gpu, "bf16", Layout(gpus), 64, 8192)
    metrics = {m: {"p50": 0.1, "p90": 0.1, "p99": 0.1, "mean": 0.1} for m in ("ttft", "itl", "tpot", "e2e")}
    return Evaluation("colocated", [Pool(engine, 1, usd / gpus)], source, True, metrics,
                      [] if meets else ["itl_p90 0.1 s > 0.05 s"], {"itl_p90": 0.5 if meets else 2.0})


def test_choose_takes_the_cheapest_simulated_success():
    cheap_fail = _evaluation("a", 1.0, meets=False)
    cheap_closed_form = _evaluation("b", 1.5, meets=True, source="closed form")
    good = _evaluation("c", 3.0, meets=True)
    dearer = _evaluation("d", 4.0, meets=True)
    assert choose([dearer, cheap_fail, good, cheap_closed_form]) is good
    assert choose([cheap_fail, cheap_closed_form]) is None


@pytest.fixture(scope="module")
def small_catalogue(tmp_path_factory):
    """Two GPUs priced so that either one is the cheapest, and a question both can answer."""
    folder = tmp_path_factory.mktemp("prices")

    def prices(h100, h200):
        path = folder / f"prices-{h100}-{h200}.yaml"
        path.write_text(yaml.safe_dump({"gpus": {
            "h100-sxm": {"usd_per_gpu_hour": h100, "source": "test", "date": "2026"},
            "h200-sxm": {"usd_per_gpu_hour": h200, "source": "test", "date": "2026"}}}))
        return path

    def question(price_file):
        return build_question(None, {
            "model": "mixtral", "prices": str(price_file),
            "traffic": {"rate": 2, "input_len": 512, "output_len": 128},
            "slo": {"ttft_p90": 2.0, "itl_p90": 0.2},
            "search": {"gpus": ["h100", "h200"], "max_gpus": 4, "max_num_seqs": [64], "disaggregation": False},
            "simulation": {"requests": 100}})

    return prices, question


def test_cheapest_configuration_meeting_the_slos(small_catalogue):
    prices, question = small_catalogue
    # H200 nearly free: one H200 (Mixtral fits one) is the answer
    plan = run_search(question(prices(100.0, 1.0)))
    assert plan.chosen is not None and plan.chosen.pools[0].engine.gpu == "h200-sxm"
    assert plan.chosen.gpus == 1 and plan.chosen.meets
    # H100 far cheaper: two H100s (Mixtral bf16 needs two 80 GB cards) beat any H200
    plan = run_search(question(prices(0.5, 100.0)))
    chosen = plan.chosen
    assert chosen is not None and chosen.pools[0].engine.gpu == "h100-sxm" and chosen.gpus == 2
    # no simulated success is cheaper than the chosen one
    assert all(e.usd_per_hour >= chosen.usd_per_hour for e in plan.evaluations
               if e.source == "simulation" and e.meets)
    assert any("does not fit" in r["reason"] and r["gpu"] == "h100-sxm" and r["layout"]["tp"] == 1
               and r["layout"]["pp"] == 1 and r["layout"]["ep"] == 1 for r in plan.rejected)


def test_predict_serving_is_a_function_of_one_deployment():
    from perfmodel.planning import predict_serving

    low = predict_serving("mixtral", "h200", {"tp": 1}, {"rate": 1, "input_len": 1024, "output_len": 128},
                          requests=100)
    high = predict_serving("mixtral", "h200", (1, 1, 1), {"rate": 6, "input_len": 1024, "output_len": 128},
                           requests=100)
    for key in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
        assert set(low[key]) == {"p50", "p90", "p99", "mean"}
    assert high["itl_s"]["mean"] > low["itl_s"]["mean"] and not high["overloaded"]
    assert high["mean_batch"] > low["mean_batch"] > 0 and low["kv_tokens"] > 100_000
    two = predict_serving("mixtral", "h200", (1, 1, 1), {"rate": 6, "input_len": 1024, "output_len": 128},
                          replicas=2, requests=100)
    assert two["mean_batch"] < high["mean_batch"]
    from perfmodel.errors import InputError

    with pytest.raises(InputError):
        predict_serving("mixtral", "h200", {"tq": 2}, {"rate": 1})
    with pytest.raises(InputError):
        predict_serving("mixtral", "h200", (3, 1, 1), {"rate": 1})


def test_a_plan_carries_the_serving_band_where_it_was_measured(monkeypatch):
    """One engine on one H200 in bf16, colocated: the profile's serving band (from held-out
    measured serving runs), saying the runs were replayed at their hosts' speeds; a quantization
    scheme carries it where its own serving runs lie within it, and says how many; a scheme whose
    runs lie outside, one never served, an fp8 KV cache, another GPU: no band, and why. A dense
    model (the band is the MoE models' runs') takes it as far as the dense models' served runs,
    checked apart, lie within it; where none was served, none."""
    from perfmodel.planning.answer import answer
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search
    from perfmodel.profile import ServingSchemeCheck, load_profile

    def plan(model="olmoe", **search):
        q = PlanQuestion(model=model, traffic={"rate": 2, "input_len": 256, "output_len": 32},
                         slo={"ttft_p90": 2.0, "itl_p90": 0.1}, search={"max_gpus": 1, **search},
                         simulation={"requests": 60, "warmup": 20})
        (p,) = answer(run_search(q), sweep=False)["profile"]
        return p

    band = load_profile("vllm", "h200-sxm").serving_error_band
    here = plan(gpus=["h200"])
    assert here["serving_error_band"]["runs"] == band.runs >= 5
    assert here["serving_error_band"]["ttft_p50"] == band.ttft_p50 > 0
    assert f"over {band.runs} held-out measured serving runs" in here["serving_error_band_note"]
    assert "reference host" in here["serving_error_band_note"]
    check = band.schemes["fp8"]  # Mixtral-8x7B and Qwen3-30B-A3B served in fp8
    fp8 = plan(gpus=["h200"], dtypes=["fp8"])
    assert (fp8["serving_error_band"] is not None) == check.within
    assert (f"its {check.runs} fp8 runs lie within it" if check.within else
            f"its {check.runs} fp8 runs lie outside it") in fp8["serving_error_band_note"]
    monkeypatch.setitem(band.schemes, "fp8", ServingSchemeCheck(runs=3, within=False,
                                                                errors={"itl_p90": 2 * band.itl_p90}))
    fp8 = plan(gpus=["h200"], dtypes=["fp8"])
    assert fp8["serving_error_band"] is None
    assert ("measured in bf16; its 3 fp8 runs lie outside it (itl_p90 "
            f"{2 * band.itl_p90:.0%} against ±{band.itl_p90:.0%})") in fp8["serving_error_band_note"]
    monkeypatch.delitem(band.schemes, "fp8")
    fp8 = plan(gpus=["h200"], dtypes=["fp8"])
    assert fp8["serving_error_band"] is None and "measured in bf16" in fp8["serving_error_band_note"]
    kv = plan(gpus=["h200"], kv_dtype="fp8")
    assert kv["serving_error_band"] is None and "not fp8" in kv["serving_error_band_note"]
    other = plan(gpus=["b200"])  # the H200's fit, carried to a GPU never measured
    assert other["serving_error_band"] is None and "measured on h200-sxm, not b200" in other["serving_error_band_note"]
    h100 = plan(gpus=["h100"])  # its own fit and its own serving runs: its own band
    own = load_profile("vllm", "h100-sxm").serving_error_band
    assert own.carried_from is None and h100["serving_error_band"]["runs"] == own.runs != band.runs
    assert "carried" not in h100["serving_error_band_note"]
    assert h100["serving_error_band"]["itl_p50"] == own.itl_p50
    # a dense model: the H100's dense runs, checked against its band apart, lie outside it with runs
    # enough, and each metric takes the wider of it and theirs; on the H200 none was served
    checked = own.dense
    assert checked is not None and checked.runs >= 5 and not checked.within and checked.own_band
    dense = plan(model="qwen3-0.6b", gpus=["h100"])  # its offline band: the dense models' check
    for metric in ("ttft_p50", "ttft_p90", "itl_p50", "itl_p90", "served_tok_s"):
        assert dense["serving_error_band"][metric] == pytest.approx(
            max(getattr(own, metric), checked.errors[metric])), metric
    assert (f"its {checked.runs} runs of dense models lie outside it, and each metric takes the wider"
            in dense["serving_error_band_note"])
    assert dense["error_band"] is not None and "dense-model points" in dense["error_band_note"]
    monkeypatch.setitem(own.__dict__, "dense", ServingSchemeCheck(runs=3, within=False, errors={"ttft_p50": 1.0}))
    few = plan(model="qwen3-0.6b", gpus=["h100"])
    assert few["serving_error_band"] is None
    assert ("measured on MoE models' runs; its 3 runs of dense models lie outside it (ttft_p50 100% against "
            f"±{own.ttft_p50:.0%})") in few["serving_error_band_note"]
    monkeypatch.setitem(own.__dict__, "dense", ServingSchemeCheck(runs=3, within=True, errors={"ttft_p50": 0.0}))
    inside = plan(model="qwen3-0.6b", gpus=["h100"])
    assert inside["serving_error_band"]["ttft_p50"] == own.ttft_p50
    assert "its 3 runs of dense models lie within it" in inside["serving_error_band_note"]
    unserved = plan(model="qwen3-0.6b", gpus=["h200"])
    assert band.dense is None and unserved["serving_error_band"] is None
    assert "no dense model was served" in unserved["serving_error_band_note"]


def test_a_plan_of_a_quantized_checkpoint_says_so_and_carries_no_serving_band(monkeypatch):
    """gpt-oss-120b's checkpoint keeps its experts in MXFP4: its candidates at bf16 run it so (one
    H200 holds it) and are labelled mxfp4-moe, the caveats say it, and the bf16 serving band does
    not apply, unless served runs of the checkpoint's own scheme were checked within it."""
    from perfmodel.planning.answer import answer
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search
    from perfmodel.profile import ServingSchemeCheck, load_profile

    q = PlanQuestion(model="gpt-oss-120b", traffic={"rate": 2, "input_len": 256, "output_len": 32},
                     slo={"ttft_p90": 2.0, "itl_p90": 0.1}, search={"max_gpus": 1, "gpus": ["h200"]},
                     simulation={"requests": 60, "warmup": 20})
    data = answer(run_search(q), sweep=False)
    assert data["chosen"]["gpus"] == 1 and data["chosen"]["dtype"] == "mxfp4-moe"
    assert any("stored in mxfp4-moe" in c and "experts quantized" in c for c in data["caveats"])
    (p,) = data["profile"]
    assert p["serving_error_band"] is None and "measured in bf16" in p["serving_error_band_note"]
    schemes = load_profile("vllm", "h200-sxm").serving_error_band.schemes
    monkeypatch.setitem(schemes, "mxfp4-moe", ServingSchemeCheck(runs=3, within=True))
    (p,) = answer(run_search(q), sweep=False)["profile"]
    assert p["serving_error_band"] is not None and "its 3 mxfp4-moe runs lie within it" in p["serving_error_band_note"]


def test_the_answer_names_the_cheapest_deployment_of_each_dtype_it_searched():
    """What fp8 buys: with bf16 and fp8 searched, each gets its cheapest candidate that meets the
    SLOs (the chosen one for its own dtype), and a dtype none of whose candidates meets them gets
    None; one dtype and one GPU type searched: nothing to set beside each other."""
    from perfmodel.planning.answer import answer
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search

    def plan(**search):
        q = PlanQuestion(model="mixtral-8x7b", traffic={"rate": 12, "input_len": 1024, "output_len": 256},
                         slo={"ttft_p90": 1.0, "itl_p90": 0.1},
                         search={"gpus": ["h200"], "disaggregation": False, **search},
                         simulation={"requests": 120, "warmup": 40})
        return answer(run_search(q), sweep=False)

    data = plan(dtypes=["bf16", "fp8"], max_gpus=2)
    by = data["cheapest_by"]
    assert set(by) == {"dtype"} and set(by["dtype"]) == {"bf16", "fp8"}
    for dtype, best in by["dtype"].items():  # its cheapest simulated deployment meeting the SLOs
        meeting = [p for p in data["points"] if p["dtype"] == dtype and p["meets"] and p["source"] == "simulation"]
        assert best["source"] == "simulation" and best["usd_per_hour"] == min(p["usd_per_hour"] for p in meeting)
    chosen = data["chosen"]
    assert chosen["dtype"] == "fp8" and by["dtype"]["fp8"]["label"] == chosen["label"]
    assert by["dtype"]["bf16"]["gpus"] > chosen["gpus"]  # one H200 in bf16 does not keep up at 12 req/s
    alone = plan(dtypes=["bf16", "fp8"], max_gpus=1)["cheapest_by"]["dtype"]
    assert alone["bf16"] is None and alone["fp8"] is not None
    assert plan(dtypes=["fp8"], max_gpus=1)["cheapest_by"] == {}


def test_a_plan_under_bursty_traffic_says_so(tmp_path, capsys):
    """traffic.burstiness (or --burstiness, which overrides it) reaches the answer: its traffic,
    its question, a caveat naming the gamma gaps and the bursty runs that were measured, and the
    report's title; Poisson traffic (1, the default) has no such caveat."""
    config = tmp_path / "q.yaml"
    config.write_text("model: olmoe-1b-7b\ntraffic: {rate: 4, burstiness: 0.5}\n"
                      "slo: {ttft_p90: 1.0, itl_p90: 0.05}\nsearch: {gpus: [h200], max_gpus: 1}\n")
    code, out, _ = _run(["plan", "--config", str(config), "--json", "--out", str(tmp_path / "r")], capsys)
    data = json.loads(out)
    assert code == 0 and data["traffic"]["burstiness"] == 0.5 and data["question"]["traffic"]["burstiness"] == 0.5
    (caveat,) = [c for c in data["caveats"] if "gamma-distributed gaps of shape 0.5" in c]
    assert "burstier than Poisson" in caveat and "on two machines" in caveat and "Mixtral-8x7B in fp8" in caveat
    assert "Steadier gaps (shape 4) were measured once" in caveat and "against Poisson is not measured" in caveat
    assert "(burstiness 0.5)" in (tmp_path / "r" / "summary.md").read_text().splitlines()[0]
    code, out, _ = _run(["plan", "--config", str(config), "--burstiness", "1", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["traffic"]["burstiness"] == 1.0
    assert not [c for c in data["caveats"] if "gamma-distributed" in c]
