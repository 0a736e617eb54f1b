"""The family registry (:mod:`perfmodel.specs.families`): one adapter per ``model_type``.

Each adapter's parts agree with each other and with transformers: its transformers class is
the one built from its ``model_type``; the MoE shape it reads for benchmarks and model builders
(from a config dict or a transformers config object) is the spec's; each friendly ``--set``
name either sets the spec field it names or is refused; a wrapping config (Llama 4's
``text_config``) reads as its text family. The GPU side imports the registry without pydantic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import transformers

from perfmodel import symbols
from perfmodel.errors import InputError
from perfmodel.graph import model_values
from perfmodel.specs.families import FAMILIES, KNOBS, SUPPORTED_MODEL_TYPES, WRAPPED_TYPES, family, register
from perfmodel.specs.model import ModelSpec, load_model
from perfmodel.specs.zoo import load_hf_config, zoo, zoo_names

try:
    from tests import hf_tiny
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    import hf_tiny

#: One zoo model per family (the first by name).
EXAMPLES = {}
for _name in zoo_names():
    EXAMPLES.setdefault(zoo()[_name].config["model_type"], _name)


def test_every_family_has_a_zoo_model_and_every_zoo_model_a_family():
    assert set(EXAMPLES) == set(FAMILIES)
    assert SUPPORTED_MODEL_TYPES == tuple(FAMILIES)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_transformers_class_is_the_one_of_the_model_type(model_type):
    cls = getattr(transformers, FAMILIES[model_type].hf_architecture)
    assert cls.config_class.model_type == model_type


@pytest.mark.parametrize("name", zoo_names())
def test_moe_shape_is_the_specs(name):
    from perfmodel.measuring.hf_build import moe_shape

    cfg = load_hf_config(name)
    spec = load_model(name)
    config = hf_tiny.hf_config(cfg, eager=False)
    adapter = family(cfg["model_type"])
    if spec.moe is None:
        assert adapter.moe_shape(cfg) is None and adapter.moe_shape(config) is None
        assert moe_shape(config) == (None, None)
        return
    m = spec.moe
    expected = (m.n_experts, m.top_k, m.expert_intermediate, spec.hidden)
    for source in (cfg, config):  # a config dict, a transformers config object
        shape = adapter.moe_shape(source)
        assert (shape.experts, shape.top_k, shape.expert_width, shape.hidden) == expected
    assert moe_shape(config) == (m.n_experts, m.top_k)


@pytest.mark.parametrize("name", zoo_names())
def test_benchmark_shape_is_the_specs(name):
    from perfmodel.calibration.bench_shapes import model_shape

    spec = load_model(name)
    if spec.moe is None:
        with pytest.raises(InputError, match="no routed experts"):
            model_shape(name)
        return
    shape = model_shape(name)
    m = spec.moe
    assert (shape.experts, shape.top_k, shape.moe_ffn) == (m.n_experts, m.top_k, m.expert_intermediate)
    assert shape.shared_ffn == (m.n_shared * m.shared_intermediate or None)  # Llama 4: one shared expert
    assert shape.dense_ffn == (spec.dense_intermediate if spec.n_dense_layers else None)


def _new_value(knob: str, spec: ModelSpec) -> int:
    """A valid value other than the model's own for a friendly name."""
    a, m = spec.attention, spec.moe
    return {
        "num_layers": spec.n_layers + 2, "hidden_size": spec.hidden + 64, "num_heads": 2 * a.n_heads,
        "num_kv_heads": 1, "head_dim": a.head_dim + 16, "vocab_size": spec.vocab + 1,
        "num_experts": 2 * m.n_experts if m else 8, "top_k": 1,
        "moe_intermediate_size": m.expert_intermediate + 128 if m else 256,
        "ffn": m.expert_intermediate + 128 if m else 256,
        "num_shared_experts": m.n_shared + 1 if m else 1,
        "shared_expert_intermediate_size": m.shared_intermediate + 128 if m else 256,
        "first_k_dense": 2, "dense_intermediate_size": spec.dense_intermediate + 128,
        "sliding_window": 1024,
    }[knob]


#: Friendly names every family with experts (or every family) must take.
_ALWAYS = ("num_layers", "hidden_size", "num_heads", "vocab_size")
_ALWAYS_MOE = ("num_experts", "top_k", "moe_intermediate_size", "ffn")
def _cases():
    for model_type, name in EXAMPLES.items():
        for knob in KNOBS:
            yield pytest.param(name, knob, id=f"{model_type}-{knob}")


@pytest.mark.parametrize("name", ["mixtral-8x7b", "phi-3.5-moe", "gpt-oss-20b", "olmoe-1b-7b"])
def test_a_dense_width_is_refused_where_experts_are_the_only_mlp(name):
    base = load_model(name)
    with pytest.raises(InputError, match="does not use 'dense_intermediate_size'"):
        load_model(name, {"dense_intermediate_size": base.moe.expert_intermediate + 128})


@pytest.mark.parametrize("name, knob", list(_cases()))
def test_friendly_name_sets_its_field_or_is_refused(name, knob):
    base = load_model(name)
    value = _new_value(knob, base)
    try:
        spec = load_model(name, {knob: value})
    except InputError as exc:
        assert knob not in _ALWAYS and not (base.moe and knob in _ALWAYS_MOE), exc
        assert "does not use" in str(exc) or "has no experts" in str(exc), exc
        return
    if knob == "first_k_dense":
        assert spec.n_dense_layers == value
        return
    target = spec.model_dump()
    for part in KNOBS[knob].spec:
        target = target[part]
    assert target == value


def test_knob_symbols_and_spec_paths_exist():
    spec = load_model(EXAMPLES["qwen2_moe"])  # has every spec field a knob names
    names = {sym.name for sym in model_values(spec)}
    for knob in KNOBS.values():
        if knob.symbol is not None:
            assert isinstance(getattr(symbols, knob.symbol), symbols.sp.Symbol)
            assert knob.symbol in names, knob.name
            target = spec.model_dump()
            for part in knob.spec:
                target = target[part]
            assert isinstance(target, int), knob.name


def test_wrapped_config_reads_as_its_text_family(tmp_path):
    text = dict(zoo()[EXAMPLES["llama4_text"]].config)
    for wrapper, model_type in WRAPPED_TYPES.items():
        path = tmp_path / f"{wrapper}.json"
        path.write_text(json.dumps({"model_type": wrapper, "text_config": {**text, "model_type": wrapper}}))
        assert load_model(str(path)).model_dump(exclude={"name"}) == \
            load_model(EXAMPLES[model_type]).model_dump(exclude={"name"})


def test_unknown_model_type_and_double_registration_are_refused():
    with pytest.raises(InputError, match="unsupported model_type 'bert'"):
        family("bert")
    with pytest.raises(ValueError, match="registered twice"):
        register(type(FAMILIES["mixtral"]))


def test_the_registry_needs_no_pydantic():
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from perfmodel.specs.families import FAMILIES, config_field\n"
        "from perfmodel.specs.zoo import load_hf_config\n"
        "cfg = load_hf_config('mixtral-8x7b')\n"
        "s = FAMILIES['mixtral'].moe_shape(cfg)\n"
        "print(s.experts, s.top_k, config_field('mixtral', 'ffn'), FAMILIES['phimoe'].vllm_architecture)\n"
    )
    from perfmodel.paths import ROOT

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["8", "2", "intermediate_size", "PhiMoEForCausalLM"]
