"""The on-disk cache of compiled expressions holds data, never code, and damage is harmless.

An entry is a checksummed JSON tree of whitelisted sympy node types; loading rebuilds the
expressions and lambdifies them in-process. These tests plant entries that would run code if
anything read from the cache were executed, damage entries in each way a file can be damaged,
and check that predictions from a loaded entry equal those of the uncached path.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from perfmodel import codecache, prediction
from perfmodel.prediction import OP_FIELDS, predict
from perfmodel.sweeps import sweep

MODEL = "olmoe-1b-7b"
POINT = dict(batch=4, input_len=256, output_len=64, phase="decode")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and no compiled functions in memory (restored afterwards)."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(directory))
    monkeypatch.setattr(prediction, "_COMPILED", {})
    return directory


def _forget_in_memory(monkeypatch):
    monkeypatch.setattr(prediction, "_COMPILED", {})


def _no_building(monkeypatch):
    """Make building expressions fail, so a prediction can only come from the disk cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("expressions were rebuilt instead of loaded")
    monkeypatch.setattr(prediction, "phase_expressions", refuse)


def _numbers(p) -> np.ndarray:
    metrics = [p.metrics[name] for name in prediction.METRICS]
    ops = [op[f] for op in p.ops for f in OP_FIELDS]
    return np.array(metrics + ops, dtype=float)


def _entry(directory: Path) -> Path:
    """The one entry of a compiled model in ``directory`` (a fixed set of named expressions, such
    as the layout's expert split, is an entry without passes)."""
    entries = [p for p in sorted(directory.glob("*.json")) if _payload(p)["passes"]]
    assert len(entries) == 1, entries
    return entries[0]


def _write_entry(path: Path, payload, *, header: bytes | None = None) -> None:
    """An entry with a valid header and checksum around ``payload`` (an object or raw bytes)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if header is None:
        header = b"%s %d %s" % (codecache._MAGIC, codecache.FORMAT, hashlib.sha256(body).hexdigest().encode())
    path.write_bytes(header + b"\n" + body)


def _payload(path: Path) -> dict:
    return json.loads(path.read_bytes().partition(b"\n")[2])


@pytest.fixture(scope="module")
def written_entry(tmp_path_factory):
    """(file name, bytes) of the entry an uncached prediction of the test point writes, and that
    prediction's numbers: built once per module, each test gets its own copy (``stored``)."""
    directory = tmp_path_factory.mktemp("written") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERFMODEL_CACHE_DIR", str(directory))
        mp.setattr(prediction, "_COMPILED", {})
        expected = _numbers(predict(MODEL, **POINT))
    path = _entry(directory)
    return path.name, path.read_bytes(), expected


@pytest.fixture
def stored(written_entry, cache, monkeypatch):
    """(entry path, its payload, the uncached prediction's numbers) for the test point: the entry
    as the uncached prediction wrote it, in this test's empty cache, nothing compiled in memory."""
    name, raw, expected = written_entry
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = cache / name
    path.write_bytes(raw)
    path.chmod(0o600)
    _forget_in_memory(monkeypatch)
    return path, _payload(path), expected.copy()


@pytest.mark.parametrize("model, engine, phase", [
    ("mixtral-8x7b", "roofline", "request"),
    ("deepseek-v2-lite", "hf", "decode"),
    ("gpt-oss-20b", "vllm", "prefill"),
])
def test_loaded_entry_predicts_what_the_uncached_path_predicts(model, engine, phase, cache, monkeypatch):
    points = [dict(engine=engine, phase=phase, batch=16, input_len=512, output_len=128),
              dict(engine=engine, phase=phase, batch=3, input_len=77, output_len=9, dtype="fp8")]
    uncached = [_numbers(predict(model, **point)) for point in points]
    assert list(cache.glob("*.json"))
    _forget_in_memory(monkeypatch)
    _no_building(monkeypatch)
    for point, expected in zip(points, uncached):
        np.testing.assert_allclose(_numbers(predict(model, **point)), expected, rtol=1e-12, atol=0)


def test_a_tuned_tables_step_is_cached_and_loads_with_the_same_numbers(cache, monkeypatch):
    """The Mixtral skeleton at FFN 1792 meets a fused-MoE table timed against the default rule on
    the H100 (the profile's moe_table_extra): its expressions hold a Piecewise per table entry,
    nested, whose conditions sympy joins with or and common-subexpression elimination keeps as
    temporaries. They are stored, and with nothing compiled in memory and building refused they load
    with the same numbers."""
    stored = []
    original = codecache.store
    monkeypatch.setattr(codecache, "store", lambda key, **kw: (stored.append(key), original(key, **kw)))
    points = [dict(engine="vllm", gpu="h100-sxm", phase="request", batch=b, input_len=s, output_len=32,
                   overrides={"intermediate_size": 1792}) for b, s in ((1, 16), (16, 128), (64, 512))]
    uncached = [_numbers(predict("mixtral-8x7b", **point)) for point in points]
    payloads = [_payload(cache / f"{key}.json") for key in stored]  # every built entry was written
    assert any("Or" in json.dumps(payload) for payload in payloads)
    _forget_in_memory(monkeypatch)
    _no_building(monkeypatch)
    for point, expected in zip(points, uncached):
        np.testing.assert_allclose(_numbers(predict("mixtral-8x7b", **point)), expected, rtol=1e-12, atol=0)


def test_sweep_totals_come_from_the_cache_unchanged(cache, monkeypatch):
    grid = {"batch": [1, 8, 64], "top_k": [1, 4]}
    uncached = sweep(MODEL, grid, input_len=256, output_len=64)
    _forget_in_memory(monkeypatch)
    _no_building(monkeypatch)
    loaded = sweep(MODEL, grid, input_len=256, output_len=64)
    numeric = uncached.select_dtypes("number").columns
    np.testing.assert_allclose(loaded[numeric].to_numpy(float), uncached[numeric].to_numpy(float), rtol=1e-12)


def test_entry_is_data_with_private_permissions_and_no_leftovers(cache):
    predict(MODEL, **POINT)
    path = _entry(cache)
    payload = _payload(path)
    text = path.read_text()
    assert "def " not in text and "lambdify" not in text and "import" not in text
    assert set(payload) == {"args", "replacements", "exprs", "passes", "outputs"}
    assert all(p.suffix == ".json" for p in cache.iterdir())  # each temporary file was renamed
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(cache.stat().st_mode) & 0o077 == 0


# --- planted entries that would run code if executed -----------------------------------------

def _code_payloads(marker: Path, payload: dict) -> dict[str, object]:
    """Entries that create ``marker`` if any part of them is executed or printed into code."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    args = payload["args"]
    old_format = {"function": "_lambdifygenerated", "args": args, "passes": payload["passes"],
                  "outputs": payload["outputs"],
                  "source": f"{touch}\ndef _lambdifygenerated(*a):\n    {touch}\n    return [0.0]\n"}
    in_symbol = dict(payload, exprs=[touch, *payload["exprs"][1:]])
    in_argument = dict(payload, args=sorted([*args, touch]), exprs=[touch, *payload["exprs"][1:]])
    in_temporary = dict(payload, replacements=[[touch, 1], *payload["replacements"]])
    in_node_type = dict(payload, exprs=[[touch, "B"], *payload["exprs"][1:]])
    unknown_function = dict(payload, exprs=[["Function", "B"], *payload["exprs"][1:]])
    in_float = dict(payload, exprs=[["Float", touch], *payload["exprs"][1:]])
    return {"old-source-format": old_format, "symbol-name": in_symbol, "argument-name": in_argument,
            "temporary-name": in_temporary, "node-type": in_node_type,
            "unknown-function": unknown_function, "float-literal": in_float}


@pytest.mark.parametrize("case", ["old-source-format", "symbol-name", "argument-name", "temporary-name",
                                  "node-type", "unknown-function", "float-literal"])
def test_planted_code_is_never_executed(case, stored, tmp_path, monkeypatch):
    path, payload, expected = stored
    marker = tmp_path / "marker"
    planted = _code_payloads(marker, payload)[case]
    if case == "old-source-format":
        path.write_text(json.dumps(planted))  # the layout that used to be exec'd
    else:
        _write_entry(path, planted)
    assert codecache.load(path.stem, op_fields=len(OP_FIELDS)) is None
    np.testing.assert_allclose(_numbers(predict(MODEL, **POINT)), expected, rtol=1e-12)
    assert not marker.exists()


# --- damaged entries --------------------------------------------------------------------------

def _damage(path: Path, payload: dict, kind: str) -> None:
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary-garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "invalid-utf8":
        _write_entry(path, b'{"args": "\xff\xfe"}')
    elif kind == "bit-flip":  # a digit changed: still valid JSON, but not what was written
        header, _, body = raw.partition(b"\n")
        i = body.index(b'"exprs":')
        while body[i] not in b"0123456789":
            i += 1
        path.write_bytes(header + b"\n" + body[:i] + bytes([body[i] ^ 1]) + body[i + 1:])
    elif kind == "a-directory":
        path.unlink()
        path.mkdir()
    elif kind == "json-nesting":
        _write_entry(path, b"[" * 200_000 + b"]" * 200_000)
    elif kind == "expression-nesting":
        deep = "B"
        for _ in range(codecache.MAX_DEPTH + 10):
            deep = ["Add", deep, 1]
        _write_entry(path, dict(payload, exprs=[deep, *payload["exprs"][1:]]))
    elif kind == "not-an-object":
        _write_entry(path, [1, 2, 3])
    elif kind.startswith("wrong-type-"):
        field, value = {"wrong-type-args": ("args", 5), "wrong-type-outputs": ("outputs", "ttft_s"),
                        "wrong-type-passes": ("passes", [[1, 2]]), "wrong-type-exprs": ("exprs", {"a": 1}),
                        "wrong-type-replacements": ("replacements", [["x0"]]),
                        "wrong-type-replacement-node": ("replacements", [["x0", [[1], 2]]]),
                        "wrong-type-ops": ("passes", [["decode", "moe.experts"]]),
                        "wrong-type-bool": ("exprs", [True, *payload["exprs"][1:]]),
                        "wrong-type-rational": ("exprs", [["Rational", 1, 0], *payload["exprs"][1:]]),
                        "wrong-type-arity": ("exprs", [["Pow", "B"], *payload["exprs"][1:]]),
                        }[kind]
        _write_entry(path, dict(payload, **{field: value}))
    elif kind == "missing-field":
        _write_entry(path, {k: v for k, v in payload.items() if k != "outputs"})
    elif kind == "too-few-expressions":
        _write_entry(path, dict(payload, exprs=payload["exprs"][:-1]))
    elif kind == "unknown-symbol":
        _write_entry(path, dict(payload, exprs=["nonexistent", *payload["exprs"][1:]]))
    elif kind == "self-reference":
        first = payload["replacements"][0][0]
        _write_entry(path, dict(payload, replacements=[[first, first], *payload["replacements"][1:]]))
    elif kind == "shadowing-argument":  # would replace a numpy function the code calls
        _write_entry(path, dict(payload, args=sorted([*payload["args"], "amax"]),
                                exprs=["amax", *payload["exprs"][1:]]))
    elif kind == "huge-exponent":  # an exact integer power that would not end
        _write_entry(path, dict(payload, exprs=[["Pow", payload["args"][0], 10**12], *payload["exprs"][1:]]))
    elif kind == "unused-argument":
        _write_entry(path, dict(payload, args=sorted([*payload["args"], "zz_unused"])))
    elif kind == "old-format-header":
        _write_entry(path, payload, header=b"%s 1 %s" % (codecache._MAGIC, b"0" * 64))
    elif kind == "too-large":
        _write_entry(path, b" " * (codecache.MAX_ENTRY_BYTES + 1))
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        raise AssertionError(kind)


DAMAGE = ["truncated", "empty", "binary-garbage", "invalid-utf8", "bit-flip", "a-directory",
          "json-nesting", "expression-nesting", "not-an-object", "wrong-type-args",
          "wrong-type-outputs", "wrong-type-passes", "wrong-type-exprs", "wrong-type-replacements", "wrong-type-replacement-node",
          "wrong-type-ops", "wrong-type-bool", "wrong-type-rational", "wrong-type-arity",
          "missing-field", "too-few-expressions", "unknown-symbol", "self-reference",
          "shadowing-argument", "huge-exponent", "unused-argument", "old-format-header", "too-large", "fifo"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_entry_is_ignored(kind, stored):
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path, payload, _ = stored
    _damage(path, payload, kind)
    assert codecache.load(path.stem, op_fields=len(OP_FIELDS)) is None


@pytest.mark.parametrize("kind", ["json-nesting", "wrong-type-outputs", "a-directory", "truncated"])
def test_prediction_over_a_damaged_entry_equals_the_uncached_one(kind, stored):
    path, payload, expected = stored
    _damage(path, payload, kind)
    np.testing.assert_allclose(_numbers(predict(MODEL, **POINT)), expected, rtol=1e-12)
    if kind != "a-directory":
        assert codecache.load(path.stem, op_fields=len(OP_FIELDS)) is not None  # rewritten whole


def test_damaged_entry_through_the_cli_is_not_a_traceback(stored, cache):
    import subprocess
    path, payload, _ = stored
    _damage(path, payload, "json-nesting")
    env = {**os.environ, "PERFMODEL_CACHE_DIR": str(cache)}
    argv = ["predict", MODEL, "--phase", "decode", "--batch", "4", "--input-len", "256",
            "--output-len", "64", "--json"]
    proc = subprocess.run([sys.executable, "-m", "perfmodel", *argv], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["model"] == MODEL


# --- writing ------------------------------------------------------------------------------------

def test_expressions_outside_the_format_are_not_stored(cache):
    x = sp.Symbol("B")
    codecache.store("k" * 24, symbols=[x], replacements=[], exprs=[sp.sin(x)], passes=[], outputs=["y"])
    assert not cache.exists() or not list(cache.iterdir())
    codecache.store("k" * 24, symbols=[x], replacements=[], exprs=[sp.Max(x, 2) ** sp.Rational(1, 2)],
                    passes=[], outputs=["y"])
    hit = codecache.load("k" * 24, op_fields=len(OP_FIELDS))
    assert hit is not None and hit.args == ("B",)
    assert codecache.lambdify(hit.symbols, hit.replacements, hit.exprs)(9)[0] == pytest.approx(3.0)


def test_unwritable_cache_is_silent(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(blocker / "cache"))
    x = sp.Symbol("B")
    codecache.store("k" * 24, symbols=[x], replacements=[], exprs=[x + 1], passes=[], outputs=["y"])
    assert codecache.load("k" * 24, op_fields=len(OP_FIELDS)) is None


def test_a_piecewise_is_stored_and_loaded_as_data(cache):
    b, s = sp.symbols("B S", positive=True)
    expr = sp.Piecewise((b, b < s), (s * 2, s <= 3), (b + s, sp.true))
    codecache.store("p" * 24, symbols=[b, s], replacements=[], exprs=[expr], passes=[], outputs=["y"])
    hit = codecache.load("p" * 24, op_fields=0)
    assert hit is not None and hit.outputs == ("y",)
    fn = codecache.lambdify(hit.symbols, hit.replacements, hit.exprs)
    for bv, sv in ((1.0, 2.0), (5.0, 2.0), (5.0, 4.0)):
        assert fn(bv, sv)[0] == pytest.approx(float(expr.subs({b: bv, s: sv})))


@pytest.mark.parametrize("condition", [["Eq", "B", 1], ["Lt", "B"], ["true", 1], True, ["Lt", "B", ["sin", "B"]]],
                         ids=["unknown-relation", "one-side", "true-with-args", "bare-boolean", "bad-side"])
def test_a_piecewise_with_a_bad_condition_is_refused(condition):
    body = json.dumps({"args": ["B"], "replacements": [], "exprs": [["Piecewise", ["B", condition], [1, ["true"]]]],
                       "passes": [], "outputs": ["y"]}).encode()
    data = b"perfmodel-expressions %d %s\n" % (codecache.FORMAT, hashlib.sha256(body).hexdigest().encode()) + body
    with pytest.raises(ValueError):
        codecache._parse(data, 0)


def test_conditions_joined_or_kept_as_temporaries_are_stored_and_give_sympys_numbers(cache):
    b, s = sp.symbols("B S", positive=True)
    small, t0, t1 = b < 4, sp.Symbol("x0"), sp.Symbol("x1")
    exprs = [sp.Piecewise((b, sp.Or(small, s >= 8)), (s, sp.And(b <= 6, sp.Not(s > 2))), (b * s, True)),
             sp.Piecewise((t1 + 1, t0), (2 * t1, sp.Or(t0, s < 3)), (0, True))]
    replacements = [(t0, small), (t1, b + s)]
    codecache.store("c" * 24, symbols=[b, s], replacements=replacements, exprs=exprs, passes=[], outputs=["y", "z"])
    hit = codecache.load("c" * 24, op_fields=0)
    assert hit is not None and [type(v) for _, v in hit.replacements] == [sp.StrictLessThan, sp.Add]
    fn = codecache.lambdify(hit.symbols, hit.replacements, hit.exprs)
    inline = [e.subs(t1, b + s).subs(t0, small) for e in exprs]
    for bv, sv in ((1.0, 1.0), (5.0, 2.0), (5.0, 9.0), (7.0, 2.5), (7.0, 1.0)):
        assert fn(bv, sv) == pytest.approx([float(e.subs({b: bv, s: sv})) for e in inline])


@pytest.mark.parametrize("replacements, expr", [
    ([["x0", ["Lt", "B", 2]]], ["Add", "x0", 1]),  # a condition where a number belongs
    ([["x0", ["Add", "B", 2]]], ["Piecewise", [1, "x0"], [0, ["true"]]]),  # a number where a condition belongs
    ([], ["Piecewise", [1, "B"], [0, ["true"]]]),  # an argument as a condition
    ([], ["Piecewise", [1, ["Or", ["Lt", "B", 2]]], [0, ["true"]]]),  # or of one condition
    ([], ["Piecewise", [1, ["Not", ["Lt", "B", 2], ["Lt", "B", 3]]], [0, ["true"]]]),  # not of two
], ids=["condition-as-number", "number-as-condition", "argument-as-condition", "or-of-one", "not-of-two"])
def test_a_condition_and_a_number_are_not_mistaken_for_each_other(replacements, expr):
    body = json.dumps({"args": ["B"], "replacements": replacements, "exprs": [expr], "passes": [],
                       "outputs": ["y"]}).encode()
    data = b"perfmodel-expressions %d %s\n" % (codecache.FORMAT, hashlib.sha256(body).hexdigest().encode()) + body
    with pytest.raises(ValueError):
        codecache._parse(data, 0)


def test_a_float_of_few_digits_is_its_decimal_number():
    """sp.Float(x, 6) is held in 23 bits: the cache prints and stores the six digits, as
    sympy's own printer does, so a cached expression gives what an uncached one gives."""
    x = sp.Symbol("x")
    few = sp.Float(2.754e-5, 6)
    assert float(few) != 2.754e-5  # the binary fraction behind the six digits
    assert codecache.lambdify((x,), [], [few * x])(1.0)[0] == 2.754e-5
    assert codecache._encode(few) == ["Float", 2.754e-5]
    assert codecache._encode(sp.Float(1 / 3)) == ["Float", 1 / 3]  # a double's, exactly


def test_a_piecewise_must_end_on_a_true_condition():
    body = json.dumps({"args": ["B"], "replacements": [], "exprs": [["Piecewise", ["B", ["Lt", "B", 1]]]],
                       "passes": [], "outputs": ["y"]}).encode()
    data = b"perfmodel-expressions %d %s\n" % (codecache.FORMAT, hashlib.sha256(body).hexdigest().encode()) + body
    with pytest.raises(ValueError):
        codecache._parse(data, 0)


def test_named_expressions_are_built_once_and_then_read_from_disk(cache, monkeypatch):
    """The waves' plan: compiled and stored by the first process, read back (no rebuild) by the
    next, with the same numbers."""
    from perfmodel import waves

    names, order, first = codecache.lambdify_named("waves.plan", waves.plan_expressions, waves._PLAN_ARGS, cse=True)
    assert set(names) == {"concurrent_sequences", "kv_waves", "kv_capacity_tokens"} and list(order) == sorted(order)
    monkeypatch.setattr(waves, "plan_expressions", lambda: pytest.fail("rebuilt"))
    again_names, again_order, again = codecache.lambdify_named("waves.plan", waves.plan_expressions,
                                                               waves._PLAN_ARGS, cse=True)
    assert (again_names, again_order) == (names, order)
    values = dict(B=300.0, S=2048.0, O=2048.0, weights_bytes=9e10, activation_bytes=3e9, kv_cache_bytes=8e10,
                  usable_bytes=1.26e11, chunk_tokens=16384.0, max_sequences=np.inf)
    args = [values[a] for a in order]
    assert [float(v) for v in again(*args)] == pytest.approx([float(v) for v in first(*args)])
    # (1.26e11 - 9e10 - 3e9) / (8e10 / 300) = 123.75 sequences at once: 3 waves; 123.75·4,096 tokens
    assert dict(zip(names, (float(v) for v in first(*args)))) == {
        "concurrent_sequences": 123.0, "kv_waves": 3.0, "kv_capacity_tokens": 506880.0}


def test_a_named_entry_in_other_arguments_is_rebuilt(cache):
    """An entry under the name whose arguments are not the ones asked for is not used."""
    b, q = sp.symbols("B Q", positive=True)
    codecache.lambdify_named("probe", lambda: {"y": b + q}, ("B", "Q"))
    names, order, fn = codecache.lambdify_named("probe", lambda: {"y": 2 * b}, ("B",))
    assert order == ("B",) and fn(3.0)[0] == 6.0

