"""The memory verdict against the engines': every measured batch that ran fits, the batches the
engine could not allocate do not (transformers' StaticCache holds the whole batch from the start:
no waves), but at the edge of the capacity."""

from __future__ import annotations

import json

import pytest

from perfmodel import predict
from perfmodel.measuring.compare import row_overrides
from perfmodel.paths import RESULTS_DIR

#: The transformers rows: file, GPU.
HF_ROWS = (("h100-hf.jsonl", "h100-sxm"), ("h200-hf.jsonl", "h200-sxm"), ("h200-hf-whatif.jsonl", "h200-sxm"))
#: A batch within this fraction of the capacity is at its edge: the allocator's own overhead and
#: the order of the tensors it holds decide there, which the model's sum of bytes does not.
EDGE = 0.9


def _verdicts(files, engine: str):
    out = []
    for name, gpu in files:
        for line in (RESULTS_DIR / name).read_text().splitlines():
            row = json.loads(line)
            if row["status"] not in ("ok", "oom"):
                continue
            p = predict(row["model"], engine=engine, gpu=gpu, batch=row["batch"], input_len=row["input_len"],
                        output_len=row["output_len"], overrides=row_overrides(row))
            share = p.metrics["memory_bytes"] / p.metrics["memory_capacity_bytes"]
            out.append((row, p.metrics["fits_in_memory"], share))
    return out


def test_transformers_batches_fit_where_they_ran_and_not_where_they_ran_out():
    verdicts = _verdicts(HF_ROWS, "hf")
    ran = [(r, fits) for r, fits, _ in verdicts if r["status"] == "ok"]
    out = [(r, fits, share) for r, fits, share in verdicts if r["status"] == "oom"]
    assert len(ran) > 200 and len(out) >= 6
    assert all(fits for _, fits in ran), [r["point_id"] for r, fits in ran if not fits]
    missed = [(r["point_id"], share) for r, fits, share in out if fits]
    assert all(share > EDGE for _, share in missed), missed  # only at the edge
    assert len(missed) <= 1


def test_a_static_cache_batch_fits_whole_or_not_at_all():
    """Qwen3-30B-A3B, 32 sequences of 2,048 + 2,048 tokens on the H100: transformers ran out of
    memory allocating them; in waves (vLLM's way) the same batch would fit two waves of 16."""
    hf = predict("qwen3-30b-a3b", engine="hf", gpu="h100-sxm", batch=32, input_len=2048, output_len=2048).metrics
    assert not hf["fits_in_memory"] and hf["concurrent_sequences"] == 0 and hf["kv_waves"] == 0
    vllm = predict("qwen3-30b-a3b", engine="vllm", gpu="h100-sxm", batch=256, input_len=2048,
                   output_len=2048).metrics
    assert vllm["fits_in_memory"] and vllm["kv_waves"] > 1


def test_the_sweep_gives_the_same_verdict():
    from perfmodel.sweeps import sweep

    table = sweep("qwen3-30b-a3b", {"batch": [16, 32]}, engine="hf", gpu="h100-sxm", input_len=2048,
                  output_len=2048)
    by_batch = dict(zip(table["batch"], table["fits_in_memory"]))
    assert by_batch == {16: True, 32: False}
    assert list(table["concurrent_sequences"]) == [16, 0] and list(table["kv_waves"]) == [1, 0]


@pytest.mark.parametrize(("draft", "ran"), [("qwen3-8b", False), ("qwen3-4b", True)])
def test_a_draft_beside_its_target_fits_where_vllm_found_room_for_a_kv_cache(draft, ran):
    """Qwen3-30B-A3B with a Qwen3 draft on the H100 (h1c13, h1c21): the 4B draft ran, the 8B's
    engine found no memory for a KV cache beside the two models' weights."""
    p = predict("qwen3-30b-a3b", engine="vllm", gpu="h100-sxm", batch=16, input_len=512, output_len=512,
                spec_draft=draft, spec_tokens=4, spec_accept=0.7)
    assert p.metrics["fits_in_memory"] is ran
    rows = [json.loads(line) for line in (RESULTS_DIR / "h100-vllm-whatif.jsonl").read_text().splitlines()]
    measured = {r["status"] for r in rows if f"spec={draft}:4|" in r["point_id"] and r["batch"] == 16}
    assert measured == ({"ok"} if ran else {"oom"})
