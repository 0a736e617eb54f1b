"""A sweep over several models: the same grid for each, stacked with a ``model`` column."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.specs.model import load_model
from perfmodel.sweeps import sweep

GRID = {"batch": [1, 16], "quant": ["none", "fp8"]}


def test_the_stack_is_each_models_own_sweep():
    both = sweep("ignored", {"model": ["olmoe-1b-7b", "qwen3-30b-a3b"], **GRID}, gpu="h100-sxm")
    assert list(both.columns[:1]) == ["model"] and list(both["model"].unique()) == ["olmoe-1b-7b", "qwen3-30b-a3b"]
    for name in ("olmoe-1b-7b", "qwen3-30b-a3b"):
        alone = sweep(name, GRID, gpu="h100-sxm")
        part = both[both["model"] == name].drop(columns="model").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone, check_exact=False, rtol=1e-12)
    assert both.attrs["dropped"] == {"count": 0, "of": 8, "reasons": []}


def test_models_may_come_as_an_array_or_a_series():
    names = ["olmoe-1b-7b", "qwen1.5-moe-a2.7b"]
    for given in (pd.Series(names), pd.Index(names).to_numpy()):
        assert list(sweep("x", {"model": given, "batch": [1]})["model"]) == names


def test_a_model_spec_is_named_by_its_name_and_drops_are_named_by_model():
    spec = load_model("mixtral-8x7b")
    table = sweep(spec, {"model": [spec, "olmoe-1b-7b"], "top_k": [2, 9]})
    assert set(table["model"]) == {"mixtral-8x7b", "olmoe-1b-7b"}
    dropped = table.attrs["dropped"]  # mixtral has 8 experts: top_k 9 is refused there, not in OLMoE's 64
    assert dropped["count"] == 1 and dropped["of"] == 4 and dropped["reasons"][0].startswith("mixtral-8x7b: ")


@pytest.mark.parametrize("models, fragment", [
    ("olmoe-1b-7b", "needs a list of one or more models"),
    ([], "needs a list of one or more models"),
    (["olmoe-1b-7b", "olmoe-1b-7b"], "a model is named twice: olmoe-1b-7b"),
    (["olmoe-1b-7b", "llama-3.1-8b"], "llama-3.1-8b: grid key 'top_k' needs a model with experts"),
])
def test_bad_model_lists_are_refused_in_one_line(models, fragment):
    with pytest.raises(InputError, match=fragment):
        sweep("olmoe-1b-7b", {"model": models, "top_k": [1, 2]})


def test_the_cli_takes_models_comma_separated_and_compares_them(capsys, tmp_path):
    main(["sweep", "olmoe,qwen3-30b-a3b", "--grid", "batch=1,64", "--baseline", "model=olmoe", "--json",
          "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "olmoe-1b-7b, qwen3-30b-a3b"
    rows = {(r["model"], r["batch"]): r for r in out["rows"]}
    assert set(rows) == {("olmoe", 1), ("olmoe", 64), ("qwen3-30b-a3b", 1), ("qwen3-30b-a3b", 64)}
    for batch in (1, 64):
        a, b = rows[("olmoe", batch)], rows[("qwen3-30b-a3b", batch)]
        expected = 100 * (b["itl_s"] / a["itl_s"] - 1)
        assert b["itl_s_vs_base_pct"] == pytest.approx(expected, rel=1e-9) and a["itl_s_vs_base_pct"] == 0
    page = (tmp_path / "report.html").read_text()
    assert "one line per model" in page


def test_a_config_path_with_a_comma_is_one_model(tmp_path, capsys):
    folder = tmp_path / "olmoe,variant"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "vocab_size": 50304, "max_position_embeddings": 4096}))
    main(["sweep", str(folder / "config.json"), "--grid", "batch=1,16", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and "model" not in rows[0]
