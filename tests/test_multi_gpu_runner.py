"""Layouts over several GPUs in the vllm runner (tp, ep, pp, dp), their ids and preflight, their
predictions in compare(), their exclusion from the fit, and the multi-GPU device plan."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from perfmodel.errors import InputError
from perfmodel.measuring import vllm_backend as vb
from perfmodel.measuring import vllm_replicas as vr
from perfmodel.measuring.cli import check_layout, require_layout_gpus
from perfmodel.measuring.fake_backend import FakeBackend
from perfmodel.measuring.measure import main
from perfmodel.measuring.points import build_points
from perfmodel.paths import ROOT

#: The id of a committed one-GPU row (validate/results/h200-vllm.jsonl): ids must not change.
COMMITTED_ID = ("vllm|olmoe-1b-7b|set=|layers=all|B=16|S=128|O=128|experts=vllm_fused_moe|"
                "dtype=bfloat16|graphs=1|full=0|ep=0|moe_backend=triton|quant=none|sampling=random|tp=1")


def _point(model="mixtral", batch=16, **settings):
    return build_points([model], [batch], [[128]], backend="vllm", experts_impl="vllm_fused_moe",
                        settings=vb.point_settings(**settings))[0]


# --------------------------------------------------------------------------------------------
# engine arguments and point ids
# --------------------------------------------------------------------------------------------

def test_engine_kwargs_carry_tp_pp_ep_and_the_multiprocessing_executor(tmp_path):
    one = vb.engine_kwargs([_point()], tmp_path)
    assert one["tensor_parallel_size"] == 1 and one["pipeline_parallel_size"] == 1
    assert "distributed_executor_backend" not in one  # one GPU: vLLM's own in-process worker
    kw = vb.engine_kwargs([_point(tp=2, pp=2, expert_parallel=True)], tmp_path)
    assert kw["tensor_parallel_size"] == 2 and kw["pipeline_parallel_size"] == 2
    assert kw["enable_expert_parallel"] is True and kw["distributed_executor_backend"] == "mp"
    assert vb.engine_kwargs([_point(pp=2)], tmp_path)["distributed_executor_backend"] == "mp"
    # a dp point is never one engine: each replica builds its own, for B/dp sequences
    dp = _point(batch=16, tp=2, dp=2)
    with pytest.raises(ValueError, match="one engine per replica"):
        vb.engine_kwargs([dp], tmp_path)
    replica = vr.replica_point(dp, 2)
    assert replica.batch == 8 and "dp" not in dict(replica.settings)
    rk = vb.engine_kwargs([replica], tmp_path)
    assert rk["tensor_parallel_size"] == 2 and rk["max_num_seqs"] == 8
    with pytest.raises(ValueError, match="does not divide"):
        vr.replica_point(_point(batch=1, dp=2), 2)


def test_point_ids_carry_pp_and_dp_and_one_gpu_ids_are_unchanged():
    assert _point("olmoe-1b-7b").point_id == COMMITTED_ID
    committed = [json.loads(line)["point_id"] for line in
                 (ROOT / "validate/results/h200-vllm.jsonl").read_text().splitlines() if line.strip()]
    assert COMMITTED_ID in committed
    pp, dp = _point(pp=2).point_id, _point(dp=2).point_id
    assert "|pp=2|" in pp and "dp=" not in pp and "|dp=2|" in dp
    assert len({pp, dp, _point(tp=2).point_id, _point(tp=2, expert_parallel=True).point_id}) == 4
    engine = vb.VLLMBackend().describe(_point(tp=2, pp=2, expert_parallel=True))["engine"]
    assert (engine["tp"], engine["pp"], engine["dp"], engine["ep"]) == (2, 2, 1, True)
    with pytest.raises(ValueError, match="pp must be >= 1"):
        vb.point_settings(pp=0)


# --------------------------------------------------------------------------------------------
# preflight
# --------------------------------------------------------------------------------------------

@pytest.fixture
def vllm_present(monkeypatch):
    """vllm 'installed' and a CPU allowed, so that measure reaches its layout checks."""
    import torch

    monkeypatch.setattr(vb, "vllm_available", lambda: True)
    monkeypatch.setenv("PERFMODEL_ALLOW_CPU", "1")
    monkeypatch.setattr(vb.VLLMBackend, "prepare", lambda *a: pytest.fail("an engine was built"))
    return torch


@pytest.mark.parametrize("flags, visible, message", [
    (["--tp", "2", "--pp", "2"], 2, "--tp 2 x --pp 2 x --dp 1 needs 4 GPUs; 2 visible here"),
    (["--dp", "2", "--batch", "16"], 1, "needs 2 GPUs; 1 visible here"),
    (["--tp", "8"], 4, "needs 8 GPUs; 4 visible here"),
    (["--dp", "2", "--batch", "1,16"], 8, "--dp 2 does not divide batch size 1"),
    (["--pp", "0"], 8, "--pp must be an integer >= 1"),
    (["--dp", "2", "--routing-probe", "--batch", "16"], 8, "--routing-probe runs one engine"),
])
def test_layouts_the_machine_cannot_hold_are_refused_in_one_line(vllm_present, monkeypatch, tmp_path,
                                                                 capsys, flags, visible, message):
    monkeypatch.setattr(vllm_present.cuda, "device_count", lambda: visible)
    out = tmp_path / "v.jsonl"
    assert main(["olmoe", "--backend", "vllm", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_layout_checks_outside_vllm():
    with pytest.raises(InputError, match="apply to --backend vllm only"):
        check_layout("hf", 1, 2, 1, [1], False)
    check_layout("vllm", 2, 2, 2, [2, 16], False)
    require_layout_gpus(2, 2, 2, 8)
    require_layout_gpus(1, 1, 1, 0)  # one engine on one device: checked by require_gpu (or --allow-cpu)
    with pytest.raises(InputError, match="needs 8 GPUs; 7 visible"):
        require_layout_gpus(2, 2, 2, 7)


# --------------------------------------------------------------------------------------------
# data-parallel replicas (spawned processes; a fake backend stands in for vLLM)
# --------------------------------------------------------------------------------------------

def test_replicas_get_their_own_gpus_and_the_point_takes_the_slowest():
    assert vr.device_slices(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="need 4 GPUs, 3 visible"):
        vr.device_slices(2, 2, ["0", "1", "2"])
    envs = [vr.replica_env(r, d) for r, d in enumerate(["0,1", "2,3"])]
    assert envs[1]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert envs[0]["VLLM_CACHE_ROOT"] != envs[1]["VLLM_CACHE_ROOT"]  # no two compiles into one cache
    point = _point(batch=8, dp=2)
    fast = {"ttft_ms": 10.0, "itl_ms": 2.0, "e2e_ms": 264.0, "decode_total_ms": 254.0, "notes": ["a"],
            "engine_itl_ms": 1.9}
    slow = {"ttft_ms": 12.0, "itl_ms": 2.5, "e2e_ms": 330.0, "decode_total_ms": 318.0, "notes": ["b"],
            "engine_itl_ms": None}
    merged = vr.merge_replicas(point, [fast, slow], ["0", "1"])
    assert (merged["ttft_ms"], merged["itl_ms"], merged["e2e_ms"]) == (12.0, 2.5, 330.0)
    assert merged["engine_itl_ms"] == 1.9 and merged["notes"] == ["a", "b"]
    assert merged["throughput_tok_s"] == pytest.approx(8 * 256 / 0.330)
    assert [r["devices"] for r in merged["replicas"]] == ["0", "1"] and merged["replicas"][1]["batch"] == 4


def test_data_parallel_sweep_runs_one_process_per_replica(tmp_path):
    from perfmodel.measuring.runner import run_sweep

    points = build_points(["olmoe"], [4, 8], [[128]], backend="vllm", experts_impl="vllm_fused_moe",
                          settings=vb.point_settings(dp=2))
    # every replica fails its B = 4 share (B = 8 / 2 replicas) with an out-of-memory error
    oom = {vr.replica_point(points[1], 2).point_id: RuntimeError("CUDA out of memory")}
    backend = vr.DataParallelBackend(2, 1, ["3", "5"], replica_cls=FakeBackend,
                                     replica_kwargs={"failures": oom})
    out = tmp_path / "dp.jsonl"
    summary = run_sweep(points, backend, out)
    rows = {r["batch"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary.measured["ok"] == 1 and rows[8]["status"] == "oom"
    assert "replica 0 (GPUs 3)" in rows[8]["error"] and "replica 1 (GPUs 5)" in rows[8]["error"]
    ok = rows[4]
    assert ok["point_id"] == points[0].point_id and "|dp=2|" in ok["point_id"]
    assert [(r["devices"], r["batch"]) for r in ok["replicas"]] == [("3", 2), ("5", 2)]
    alone = FakeBackend().measure(None, vr.replica_point(points[0], 2))  # what each replica timed
    assert ok["ttft_ms"] == pytest.approx(alone["ttft_ms"])
    assert ok["throughput_tok_s"] == pytest.approx(2 * alone["throughput_tok_s"])


# --------------------------------------------------------------------------------------------
# compare(): predicted on the GPUs each row ran on; the fit keeps one-GPU rows only
# --------------------------------------------------------------------------------------------

def _row(tp=1, ep=False, pp=1, dp=1, model="olmoe-1b-7b", batch=16, dp_mode="replicas"):
    point = build_points([model], [batch], [[128]], backend="vllm", experts_impl="vllm_fused_moe",
                         settings=vb.point_settings(tp=tp, expert_parallel=ep, pp=pp, dp=dp, dp_mode=dp_mode))[0]
    return {"point_id": point.point_id, "status": "ok", "backend": "vllm", "model": model,
            "overrides": [], "layers": None, "batch": batch, "input_len": 128, "output_len": 128,
            "engine": vb.VLLMBackend().describe(point)["engine"], "ttft_ms": 30.0, "itl_ms": 2.0,
            "e2e_ms": 300.0, "throughput_tok_s": batch * 256 / 0.3}


def test_compare_predicts_each_row_on_its_layout():
    from perfmodel.measuring.compare import compare, layout_label, mape, row_gpus
    from perfmodel.prediction import predict

    rows = [_row(), _row(tp=2), _row(tp=2, ep=True), _row(pp=2), _row(tp=2, dp=2)]
    assert [layout_label(r) for r in rows] == ["1 GPU", "TP=2", "TP=2+EP", "PP=2", "2 × TP=2"]
    assert [row_gpus(r) for r in rows] == [1, 2, 2, 2, 4]
    points, _ = compare(rows, engine="vllm", train_models=["olmoe-1b-7b"])

    def got(i: int, metric: str) -> float:
        hit = points[(points["point_id"] == rows[i]["point_id"]) & (points["metric"] == metric)]
        assert len(hit) == 1
        return float(hit["predicted"].iloc[0])

    def expect(**layout):
        return predict("olmoe-1b-7b", engine="vllm", input_len=128, output_len=128,
                       **{"batch": 16, **layout}).metrics

    one, tp2 = expect(), expect(tp=2)
    assert got(1, "ttft") == pytest.approx(tp2["ttft_s"]) and got(1, "decode_step") == pytest.approx(tp2["itl_s"])
    assert got(1, "decode_step") != pytest.approx(one["itl_s"])  # the layout matters
    # vLLM's EP: whole experts over the 2 GPUs, the step waiting for the busier
    assert got(2, "decode_step") == pytest.approx(expect(tp=2, expert_parallel=True)["itl_s"])
    assert got(2, "decode_step") != pytest.approx(tp2["itl_s"])
    assert got(3, "e2e") == pytest.approx(expect(pp=2)["e2e_s"])
    replica = expect(batch=8, tp=2)
    assert got(4, "e2e") == pytest.approx(replica["e2e_s"])
    assert got(4, "throughput") == pytest.approx(2 * replica["throughput_tok_s"])
    split = points.drop_duplicates("point_id").set_index("layout")["split"]
    assert split["1 GPU"] == "train" and (split.drop("1 GPU") == "held-out").all()
    table = mape(points)
    assert set(table["layout"]) == {"1 GPU", "TP=2", "TP=2+EP", "PP=2", "2 × TP=2"}


def test_vllms_data_parallelism_is_predicted_as_the_models_ranks_not_as_replicas():
    """dp_mode=vllm: one deployment whose MoE layers serve every rank's tokens (the model's dp),
    where replicas are predicted one alone at B/dp."""
    from perfmodel.measuring.compare import compare, layout_label, model_workload, row_gpus, row_replicas
    from perfmodel.prediction import predict

    rows = [_row(dp=4, ep=True, dp_mode="vllm"), _row(dp=4, dp_mode="vllm"), _row(tp=2, dp=2, dp_mode="vllm"),
            _row(dp=4), _row(dp=4, ep=True)]
    assert "|dp_mode=vllm|" in rows[0]["point_id"] and "dp_mode" not in rows[3]["point_id"]
    assert [layout_label(r) for r in rows] == ["DP=4+EP", "DP=4", "TP=2 DP=2", "4 × 1 GPU", "4 × 1 GPU"]
    assert [row_gpus(r) for r in rows] == [4, 4, 4, 4, 4] and [row_replicas(r) for r in rows] == [1, 1, 1, 4, 4]
    assert model_workload(rows[0])["batch"] == 16 and model_workload(rows[0])["dp"] == 4
    assert model_workload(rows[3])["batch"] == 4 and "dp" not in model_workload(rows[3])
    points, _ = compare(rows, engine="vllm", train_models=["olmoe-1b-7b"])

    def got(i: int, metric: str) -> float:
        hit = points[(points["point_id"] == rows[i]["point_id"]) & (points["metric"] == metric)]
        return float(hit["predicted"].iloc[0])

    def expect(**layout):
        return predict("olmoe-1b-7b", engine="vllm", input_len=128, output_len=128, **layout).metrics

    dp_ep = expect(batch=16, dp=4, expert_parallel=True)
    assert got(0, "decode_step") == pytest.approx(dp_ep["itl_s"])
    assert got(0, "throughput") == pytest.approx(dp_ep["throughput_tok_s"])  # every rank's, counted once
    replica = expect(batch=4)
    assert got(3, "decode_step") == pytest.approx(replica["itl_s"])
    assert got(3, "throughput") == pytest.approx(4 * replica["throughput_tok_s"])
    # without EP the experts are cut over all 4 GPUs and serve the 16 sequences' gathered tokens:
    # not 4 engines apart, each with whole experts for its 4
    assert got(1, "decode_step") == pytest.approx(expect(batch=16, dp=4)["itl_s"])
    assert got(1, "decode_step") != pytest.approx(got(3, "decode_step"), rel=0.05)
    assert (points.drop_duplicates("point_id")["split"] == "held-out").all()


def test_vllms_data_parallel_ranks_see_every_gpu_and_meet_on_one_port():
    envs = [vr.coordinated_env(r, 2, ["4", "5", "6", "7"], 29555) for r in range(2)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"4,5,6,7"}  # vLLM places rank r on its r-th pair
    assert [(e["VLLM_DP_RANK"], e["VLLM_DP_RANK_LOCAL"], e["VLLM_DP_SIZE"]) for e in envs] == [("0", "0", "2"),
                                                                                               ("1", "1", "2")]
    assert {e["VLLM_DP_MASTER_PORT"] for e in envs} == {"29555"} and envs[0]["VLLM_DP_MASTER_IP"] == "127.0.0.1"
    assert envs[0]["VLLM_CACHE_ROOT"] != envs[1]["VLLM_CACHE_ROOT"]
    backend = vr.DataParallelBackend(2, 2, ["4", "5", "6", "7", "8"], replica_cls=FakeBackend, mode="vllm")
    got = backend.rank_envs()
    assert [e["VLLM_DP_RANK"] for e in got] == ["0", "1"] and got[0]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert got[0]["VLLM_DP_MASTER_PORT"] == got[1]["VLLM_DP_MASTER_PORT"] and backend.devices == ["4,5", "6,7"]
    assert all("VLLM_DP_RANK" not in e for e in vr.DataParallelBackend(2, 2, list("4567"),
                                                                       replica_cls=FakeBackend).rank_envs())
    with pytest.raises(ValueError, match="unknown data-parallel mode"):
        vr.DataParallelBackend(2, 1, ["0", "1"], replica_cls=FakeBackend, mode="ray")
    point = _point(batch=8, dp=2)
    ranked = vr.replica_point(_point(batch=8, dp=2, dp_mode="vllm"), 2)
    assert "dp" not in dict(ranked.settings) and "dp_mode" not in dict(ranked.settings) and ranked.batch == 4
    merged = vr.merge_replicas(point, [{"e2e_ms": 1.0}, {"e2e_ms": 2.0}], ["0,1", "2,3"], "vllm")
    assert merged["engine_detail"]["data_parallel_mode"] == "vllm" and merged["e2e_ms"] == 2.0


def test_vllms_data_parallel_mode_is_refused_where_it_cannot_run():
    from perfmodel.measuring.cli import check_dp_mode

    check_dp_mode(1, "replicas", ["llama-3.1-8b"], [])
    check_dp_mode(2, "vllm", ["olmoe-1b-7b"], [])
    for dp, mode, models, match in ((2, "ray", ["olmoe-1b-7b"], "unknown --dp-mode 'ray'"),
                                    (1, "vllm", ["olmoe-1b-7b"], "needs --dp N with N > 1"),
                                    (2, "vllm", ["llama-3.1-8b"], "has no routed experts")):
        with pytest.raises(InputError, match=match):
            check_dp_mode(dp, mode, models, [])
    with pytest.raises(ValueError, match="needs dp > 1"):
        vb.point_settings(dp_mode="vllm")


def test_validation_tables_group_by_layout(tmp_path):
    import pandas as pd
    from rich.console import Console

    from perfmodel.measuring.compare import compare, mape
    from perfmodel.validate.report_metrics import layout_rows
    from perfmodel.validate.terminal import print_validation

    rows = [_row(), _row(tp=2)]
    points = pd.concat([compare(rows, engine=e, train_models=["olmoe-1b-7b"])[0]
                        for e in ("vllm", "roofline")], ignore_index=True)
    shown = layout_rows(points, "vllm", "roofline")
    assert {r[0] for r in shown["rows"]} == {"1 GPU", "TP=2"} and shown["header"][0] == "layout"
    assert layout_rows(points[points["layout"] == "1 GPU"], "vllm", "roofline")["rows"] == []
    console = Console(record=True, width=200, color_system=None)
    source = {"mode": "replay", "results_file": "x", "gpu": "g", "driver": "d", "torch": "t",
              "transformers": "t", "date": "d", "git_commit": "c"}
    print_validation({"source": source, "points": points.to_dict(orient="records"),
                      "mape": mape(points).to_dict(orient="records"), "report_html": "r",
                      "summary_md": "s"}, console)
    text = console.export_text()
    assert "layout" in text and "TP=2" in text and "1 GPU" in text


def test_the_fit_keeps_one_gpu_rows_only(tmp_path):
    from perfmodel.calibration.fit import _predict_many, _rows, one_gpu_rows
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    old = json.loads((ROOT / "validate/results/h200-vllm.jsonl").read_text().splitlines()[0])
    rows = [old, _row(), _row(tp=2), _row(pp=2), _row(dp=2), _row(tp=2, ep=True)]
    assert one_gpu_rows(rows) == rows[:2]  # rows from before pp/dp existed count as one GPU
    path = tmp_path / "h200-vllm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = _rows(path, ("olmoe-1b-7b",))
    assert [r["point_id"] for r in kept] == [old["point_id"], rows[1]["point_id"]]
    gpu = load_gpu("h200-sxm")
    profile = load_profile("vllm", gpu.name)
    ttft, itl = _predict_many([rows[2]], profile, gpu)[0]
    m = evaluate(load_model("olmoe-1b-7b"), gpu, profile, Workload(batch=16, tp=2), "request").metrics
    assert (ttft, itl) == pytest.approx((m["ttft_s"], m["itl_s"]))


# --------------------------------------------------------------------------------------------
# the device plan
# --------------------------------------------------------------------------------------------

def _run_plan(tmp_path: Path, gpus: int) -> list[str]:
    """device_vllm_multi.sh with a fake nvidia-smi of ``gpus`` GPUs and a Python that records its
    arguments (and whether vLLM's V1 multiprocessing switch was set) instead of running."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls"
    scripts = {
        "nvidia-smi": f'[ "$1" = -L ] && for i in $(seq 0 {gpus - 1}); do echo "GPU $i: NVIDIA H200"; done; exit 0',
        "python": f'echo "$*|mp=${{VLLM_ENABLE_V1_MULTIPROCESSING-unset}}" >> "{record}"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "OUT": str(tmp_path / "out"), "RESUME_FROM": "", "TOTAL_BUDGET": "100000",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("GPUS", None)
    env.pop("COLLECTIVES", None)
    subprocess.run(["bash", str(ROOT / "scripts/device_vllm_multi.sh")], env=env, check=True,
                   capture_output=True, timeout=60)
    return record.read_text().splitlines()


def _flag(args: list[str], name: str) -> int:
    return int(args[args.index(name) + 1]) if name in args else 1


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_device_plan_selects_the_layouts_that_fit(tmp_path, gpus):
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    calls = _run_plan(tmp_path, gpus)
    collectives = [c for c in calls if "calibrate collectives" in c]
    committed = list((ROOT / "calibration/data").glob(f"*-x{gpus}/collectives.csv"))
    assert len(collectives) == (1 if gpus > 1 and not committed else 0)
    measures = [c.split("|mp=") for c in calls if "perfmodel.measuring.measure" in c]
    assert measures
    layouts = set()
    for line, mp in measures:
        args = line.split()
        model, tp, pp, dp = args[2], _flag(args, "--tp"), _flag(args, "--pp"), _flag(args, "--dp")
        assert tp * pp * dp <= gpus
        ep = "--expert-parallel" in args
        layouts.add((model, tp, pp, ep) + ((dp,) if dp > 1 else ()))
        # multi-GPU entries run vLLM's default multiprocessing engine; one-GPU entries as committed
        assert mp == ("unset" if tp * pp * dp > 1 else "0")
        assert args[args.index("--batch") + 1] == "16,64,1" and args[args.index("--input-len") + 1] == "2048;128"
        if dp > 1:  # vLLM's data parallelism, which the model predicts as its dp ranks
            assert args[args.index("--dp-mode") + 1] == "vllm"
        Layout(tp, 1, pp, dp, ep).check(load_model(model))  # the model predicts every layout measured
    if gpus >= 4:
        assert {("qwen3-30b-a3b", 4, 1, False), ("qwen3-30b-a3b", 4, 1, True), ("qwen3-30b-a3b", 1, 4, False),
                ("qwen3-30b-a3b", 2, 2, True), ("mixtral-8x7b", 4, 1, False), ("qwen3-30b-a3b", 1, 1, True, 4),
                ("deepseek-v2-lite", 1, 1, True, 4)} <= layouts
    if gpus == 2:
        assert {("qwen3-30b-a3b", 1, 1, True, 2), ("deepseek-v2-lite", 1, 1, True, 2)} <= layouts
    if gpus == 1:
        assert {m for m, *_ in layouts} == {"qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite"}



def test_rows_on_several_gpus_change_nothing_in_the_vllm_fit(tmp_path):
    import yaml

    from perfmodel.calibration.fit import TRAIN_MODELS, HELD_OUT_MODELS, _rows, held_out_residuals
    from perfmodel.measuring.compare import what_if_file
    from perfmodel.paths import PROFILES_DIR

    committed = ROOT / "validate/results/h200-vllm.jsonl"
    results = tmp_path / committed.name
    # training and held-out models on 2 and 4 GPUs, with times no one-GPU fit could absorb
    multi = [dict(_row(model=m, tp=tp, pp=pp), ttft_ms=1.0, itl_ms=0.05, e2e_ms=7.0)
             for m in ("mixtral-8x7b", "olmoe-1b-7b", "qwen3-30b-a3b") for tp, pp in ((2, 1), (2, 2))]
    results.write_text(committed.read_text() + "".join(json.dumps(r) + "\n" for r in multi))
    what_if_file(results).write_text(what_if_file(committed).read_text())
    # what the fit reads of the results: the training rows, and the residuals behind the band
    assert _rows(results, TRAIN_MODELS) == _rows(committed, TRAIN_MODELS)
    profile = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    args = ("h200-sxm", TRAIN_MODELS, HELD_OUT_MODELS)
    assert held_out_residuals(profile, results, *args) == held_out_residuals(profile, committed, *args)
