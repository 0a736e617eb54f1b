"""Bad input to predict and sweep on the command line: one stderr line, exit code 2."""

from __future__ import annotations

import time

import pytest

from perfmodel.commands import main
from perfmodel.sweeps import MAX_POINTS


def fails(argv: list[str], capsys) -> str:
    """The CLI exits 2 with one ``perfmodel: error:`` line; returns that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2, (info.value.code, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("perfmodel: error: "), err
    return lines[0]


@pytest.mark.parametrize("phase", ["prefill", "request"])
def test_context_outside_the_decode_phase_is_refused(phase, capsys):
    line = fails(["predict", "mixtral", "--phase", phase, "--context", "4096"], capsys)
    assert f"applies to the decode phase only, not to phase '{phase}'" in line


def test_sweep_context_outside_the_decode_phase_is_refused(capsys):
    assert "decode phase only" in fails(["sweep", "mixtral", "--grid", "batch=1,2", "--context", "64"], capsys)
    assert "decode phase only" in fails(["sweep", "mixtral", "--grid", "context=1,2"], capsys)


@pytest.mark.parametrize("argv, fragment", [
    (["--grid", "batch=1", "--grid", "batch=2"], "--grid batch is given twice"),
    (["--grid", "batch=1,2", "--batch", "4"], "'batch' is both swept (grid) and fixed (--batch"),
    (["--grid", "input_len=1,2", "-s", "4"], "'input_len' is both swept"),
    (["--grid", "dtype=bf16,fp8", "--dtype", "fp8"], "'dtype' is both swept"),
    (["--grid", "gpu=h100,h200", "--gpu", "b200"], "'gpu' is both swept"),
    (["--grid", "top_k=1,2", "--set", "top_k=2"], "'top_k' is both swept (grid) and set (--set top_k)"),
    (["--grid", "ffn=1024", "--set", "moe_intermediate_size=2048"], "'ffn' is both swept (grid) and set"),
    (["--grid", "ffn=1024", "--grid", "moe_intermediate_size=2048"], "set the same hyperparameter"),
    (["--grid", "batch=1", "--set", "top_k=2", "--set", "top_k=4"], "--set top_k is given twice"),
    (["--grid", "batch=1,1,2"], "a value given twice"),
    (["--grid", "batch=1,,2"], "an empty value between commas"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_value_given_twice_is_refused(argv, fragment, capsys):
    assert fragment in fails(["sweep", "mixtral", *argv], capsys)


def test_csv_into_a_missing_folder_names_the_folder(tmp_path, capsys):
    target = tmp_path / "no" / "dir" / "out.csv"
    line = fails(["sweep", "mixtral", "--grid", "batch=1,2", "--csv", str(target)], capsys)
    assert line == f"perfmodel: error: cannot write {target}: folder '{target.parent}' does not exist"


def test_an_output_file_that_cannot_be_a_file_is_one_line(tmp_path, capsys):
    """A folder, or a path under a file, is refused before any work; host-probe's --out too."""
    (tmp_path / "afile").write_text("x")
    assert fails(["sweep", "mixtral", "--grid", "batch=1", "--csv", str(tmp_path)], capsys) == (
        f"perfmodel: error: cannot write '{tmp_path}': it is a folder, not a file")
    under = tmp_path / "afile" / "out.csv"
    assert fails(["sweep", "mixtral", "--grid", "batch=1", "--csv", str(under)], capsys) == (
        f"perfmodel: error: cannot write {under}: folder '{tmp_path / 'afile'}' is not a folder")
    assert "it is a folder, not a file" in fails(["host-probe", "--seconds", "0.2", "--out", str(tmp_path)], capsys)


@pytest.mark.parametrize("args", [["predict", "mixtral", "--out", ""], ["validate", "olmoe", "--out="],
                                  ["plan", "mixtral", "--rate", "1", "--out", " "]])
def test_an_empty_out_is_refused_not_taken_as_the_current_folder(args, capsys):
    assert fails(args, capsys) == "perfmodel: error: --out is empty: give a file or folder"


def test_a_swept_gpu_is_named_in_the_header(capsys):
    from perfmodel.commands import main

    main(["sweep", "mixtral", "--grid", "gpu=h100,h200", "--grid", "batch=1"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("mixtral-8x7b on h100-sxm, h200-sxm ·")


def test_a_grid_point_predict_refuses_is_refused(capsys):
    line = fails(["sweep", "olmoe-1b-7b", "--grid", "hidden_size=3"], capsys)
    assert "no valid combination" in line and "hidden_size=3" in line and "head_dim" in line


def test_a_huge_grid_is_refused_before_it_is_built(capsys):
    values = ",".join(str(i) for i in range(1, 101))
    argv = ["sweep", "mixtral", *[a for key in ("batch", "input_len", "output_len", "top_k")
                                  for a in ("--grid", f"{key}={values}")]]
    start = time.perf_counter()
    line = fails(argv, capsys)
    assert time.perf_counter() - start < 5
    assert f"the grid has 100,000,000 combinations, more than the limit of {MAX_POINTS:,}" in line
    assert "--max-points" in line
    line = fails(["sweep", "mixtral", "--grid", "batch=1,2,3", "--grid", "top_k=1,2",
                  "--max-points", "5"], capsys)
    assert "6 combinations, more than the limit of 5" in line
    assert "max-points must be a positive integer" in fails(
        ["sweep", "mixtral", "--grid", "batch=1", "--max-points", "0"], capsys)


def test_max_points_help_states_the_default(capsys):
    try:
        main(["sweep", "--help"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the words, however wrapped
    assert f"than this (default {MAX_POINTS:,})" in help_text
