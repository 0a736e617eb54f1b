"""Model families: one adapter per Hugging Face ``model_type``, and the registry of them.

An adapter (a :class:`Family` subclass, registered by :func:`register`) holds everything the
project knows about one architecture:

- how its ``config.json`` becomes the fields of a :class:`perfmodel.specs.model.ModelSpec`
  (:meth:`Family.spec_fields`, with the defaults of the transformers configuration class, so a
  config that omits a field means what it means to transformers), which layers are dense, MoE
  or windowed (:meth:`Family.configure`, :meth:`Family.window`);
- the config field each friendly ``--set`` name (:data:`KNOBS`) is stored in
  (:attr:`Family.renamed`, :meth:`Family.field`), the optional and per-layer fields it reads;
- the routed-expert shape benchmarks and model builders need (:meth:`Family.moe_shape`);
- the architecture class names of transformers and of vLLM.

What makes two models compile to the same graph is not family knowledge: the op graph is built
from the :class:`ModelSpec` alone (no op reads ``model_type``), so a family's structure is what
its :meth:`Family.spec_fields` writes into the spec's non-numeric fields (attention kind, QK
norm, biases, sinks, shared experts, norm kind, which layer kinds exist), and
:func:`perfmodel.prediction.structure_key` reads it there.

Adding a family is adding one adapter here. The module imports no pydantic (the GPU side uses
the shapes, architecture names and friendly names); the validated spec is built from
:meth:`Family.spec_fields` by :func:`perfmodel.specs.model.model_from_config`. Sizes are
counts of elements, windows are tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from perfmodel.errors import InputError

# --------------------------------------------------------------------------- reading config fields

#: Largest integer a count may be (float64 holds every integer up to it exactly).
MAX_INT = 2**53


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _shown(value: Any) -> str:
    """A config value as an error message shows it (its repr, shortened)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to write out
        return "a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and (isinstance(value, int) or (
        isinstance(value, float) and value.is_integer()))  # also rejects inf and nan


def _int(cfg: Mapping[str, Any], key: str, default: Any = None, minimum: int = 0) -> int:
    value = _get(cfg, key, default)
    if value is None:
        raise InputError(f"config is missing '{key}'")
    if not _is_int(value):
        raise InputError(f"config field '{key}' must be an integer, got {_shown(value)}")
    if value < minimum:
        raise InputError(f"config field '{key}' must "
                         f"{'not be negative' if minimum == 0 else f'be at least {minimum}'}, got {_shown(value)}")
    if value > MAX_INT:
        raise InputError(f"config field '{key}' is too large, got {_shown(value)} (at most 2^53)")
    return int(value)


def _bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _get(cfg, key, default)
    if not isinstance(value, bool):
        raise InputError(f"config field '{key}' must be true or false, got {_shown(value)}")
    return value


def _per_layer(cfg: Mapping[str, Any], key: str, n_layers: int) -> list[Any] | None:
    """A per-layer list field (one entry per layer), or None when absent."""
    value = _get(cfg, key, None)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(f"config field '{key}' must be a list with one entry per layer, got {_shown(value)}")
    if len(value) != n_layers:
        raise InputError(f"config field '{key}' has {len(value)} entries, but the model has "
                         f"{n_layers} layers (num_hidden_layers)")
    return value


def _layer_types(cfg: Mapping[str, Any], n_layers: int, allowed: tuple[str, ...]) -> list[str] | None:
    """``layer_types``: one attention kind per layer, each one of ``allowed``."""
    types = _per_layer(cfg, "layer_types", n_layers)
    bad = [t for t in types or [] if t not in allowed]
    if bad:
        raise InputError(f"config field 'layer_types' holds {_shown(bad[0])}; "
                         f"each entry must be one of {', '.join(allowed)}")
    return types


def _layer_flags(cfg: Mapping[str, Any], key: str, n_layers: int) -> list[int] | None:
    """A per-layer list of 0/1 flags (an empty list counts as absent, as in transformers)."""
    flags = _get(cfg, key, None)
    if flags == []:
        return None
    flags = _per_layer(cfg, key, n_layers)
    if flags is not None and any(not (_is_int(f) or isinstance(f, bool)) or f not in (0, 1)
                                 for f in flags):
        raise InputError(f"config field '{key}' must hold only 0 or 1, one per layer")
    return flags


def _layer_indices(cfg: Mapping[str, Any], key: str, n_layers: int) -> set[int] | None:
    """A list of distinct layer indices in [0, n_layers), or None when absent."""
    value = _get(cfg, key, None)
    if value is None:
        return None
    if not isinstance(value, list) or not all(_is_int(i) for i in value):
        raise InputError(f"config field '{key}' must be a list of layer indices, got {_shown(value)}")
    indices = [int(i) for i in value]
    outside = [i for i in indices if not 0 <= i < n_layers]
    if outside:
        raise InputError(f"config field '{key}' names layer {outside[0]}, but the layers are "
                         f"0 to {n_layers - 1} (num_hidden_layers = {n_layers})")
    if len(set(indices)) != len(indices):
        raise InputError(f"config field '{key}' names a layer twice")
    return set(indices)


# --------------------------------------------------------------------------- friendly names


@dataclass(frozen=True)
class Knob:
    """A friendly ``--set`` name of a hyperparameter (also a sweep grid key when it has a symbol)."""

    name: str
    field: str  # the config field that holds it, unless a family renames it
    symbol: str | None = None  # the :mod:`perfmodel.symbols` name a sweep grid sets; None: not swept
    spec: tuple[str, ...] = ()  # the ModelSpec field it sets (a path), for a sweep over a ModelSpec
    experts: bool = False  # only a model with routed experts has it


#: Friendly names, in the order errors name them; a family maps them by :meth:`Family.field`.
KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("num_layers", "num_hidden_layers", "N_layers", ("n_layers",)),
    Knob("hidden_size", "hidden_size", "H", ("hidden",)),
    Knob("num_heads", "num_attention_heads", "n_h", ("attention", "n_heads")),
    Knob("num_kv_heads", "num_key_value_heads", "n_kv", ("attention", "n_kv_heads")),
    Knob("head_dim", "head_dim", "d_h", ("attention", "head_dim")),
    Knob("vocab_size", "vocab_size", "V", ("vocab",)),
    Knob("num_experts", "num_experts", "E", ("moe", "n_experts"), experts=True),
    Knob("top_k", "num_experts_per_tok", "k", ("moe", "top_k"), experts=True),
    Knob("moe_intermediate_size", "moe_intermediate_size", "I_e", ("moe", "expert_intermediate"), experts=True),
    # the seed study's name for the expert FFN width
    Knob("ffn", "moe_intermediate_size", "I_e", ("moe", "expert_intermediate"), experts=True),
    Knob("num_shared_experts", "n_shared_experts", "n_sh", ("moe", "n_shared"), experts=True),
    Knob("shared_expert_intermediate_size", "shared_expert_intermediate_size", "I_sh",
         ("moe", "shared_intermediate"), experts=True),
    Knob("first_k_dense", "first_k_dense_replace", experts=True),
    Knob("dense_intermediate_size", "intermediate_size", "I_d", ("dense_intermediate",)),
    Knob("sliding_window", "sliding_window", "W", ("window",)),
)}

#: Friendly names of the expert width, stored in ``intermediate_size`` by the families whose
#: experts are their only MLP.
_EXPERT_WIDTH = ("moe_intermediate_size", "ffn")


@dataclass(frozen=True)
class MoEShape:
    """The routed experts of a config as benchmarks and model builders see them (None: absent)."""

    experts: int | None
    top_k: int | None
    expert_width: int | None  # one expert's FFN width, elements
    hidden: int | None


# --------------------------------------------------------------------------- the adapters


class Family:
    """One architecture (``model_type``): see the module docstring for what it owns.

    Subclasses set the class attributes and :meth:`configure`; :meth:`window` when the family
    has sliding or chunked attention.
    """

    model_type: ClassVar[str]
    hf_architecture: ClassVar[str]  # the transformers ``*ForCausalLM`` class
    vllm_architecture: ClassVar[str]  # the class name vLLM reads from ``architectures``
    experts: ClassVar[bool] = True  # routed experts (False: a dense baseline)
    mla: ClassVar[bool] = False  # multi-head latent attention (its own head widths)
    #: None: fixed attention without biases; else the default of ``attention_bias``, which the
    #: family's transformers attention takes its q/k/v/o biases from.
    attention_bias: ClassVar[bool | None] = None
    #: friendly name -> config field, where the family differs from :data:`KNOBS`
    renamed: ClassVar[dict[str, str]] = {}
    #: fields a config may leave to the family's default but a user may ``--set``
    optional: ClassVar[tuple[str, ...]] = ()
    #: per-layer lists the family reads, rebuilt by transformers when the layer count changes
    per_layer: ClassVar[tuple[str, ...]] = ()
    #: other ``model_type`` values whose config.json holds this family's under ``text_config``
    wrappers: ClassVar[tuple[str, ...]] = ()

    def field(self, key: str) -> str:
        """The config field a friendly name (or a raw field, returned as is) maps to."""
        if key in KNOBS:
            return self.renamed.get(key, KNOBS[key].field)
        return key

    def spec_fields(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The :class:`ModelSpec` fields of a config (``attention`` and ``moe`` as plain dicts).

        Raises :class:`InputError` on a missing or malformed field.
        """
        H = _int(cfg, "hidden_size")
        n_layers = _int(cfg, "num_hidden_layers")
        n_heads = _int(cfg, "num_attention_heads")
        if n_heads == 0 or H == 0 or n_layers == 0:
            raise InputError("hidden_size, num_hidden_layers and num_attention_heads must be positive")
        top_k = _int(cfg, "num_experts_per_tok", 0) if self.experts else 0
        attn_bias = _bool(cfg, "attention_bias", self.attention_bias) if self.attention_bias is not None else False
        attention: dict[str, Any] = dict(kind="gqa", n_heads=n_heads, qkv_bias=attn_bias, o_bias=attn_bias)
        if not self.mla:  # MLA's head widths are its own fields
            attention.update(n_kv_heads=_int(cfg, "num_key_value_heads", n_heads),
                             head_dim=_int(cfg, "head_dim", H // n_heads))
        spec: dict[str, Any] = dict(
            model_type=self.model_type, hidden=H, n_layers=n_layers,
            n_dense_layers=0, dense_intermediate=0, mlp_bias=False, attention=attention, moe=None,
            norm="rms", lm_head_bias=False)
        self.configure(cfg, spec, top_k)
        if spec["moe"] is not None and spec["moe"]["top_k"] <= 0:
            raise InputError("config is missing 'num_experts_per_tok' (top_k)" if _get(cfg, "num_experts_per_tok")
                             is None else "num_experts_per_tok (top_k) must be positive")
        spec["window"], spec["n_window_layers"] = self.window(cfg, n_layers)
        spec.update(vocab=_int(cfg, "vocab_size"), tie_embeddings=_bool(cfg, "tie_word_embeddings", False),
                    max_position=_int(cfg, "max_position_embeddings", 0))
        return spec

    def configure(self, cfg: Mapping[str, Any], spec: dict[str, Any], top_k: int) -> None:
        """Set the family's own fields of ``spec`` (MLP, experts, attention details)."""
        raise NotImplementedError

    def window(self, cfg: Mapping[str, Any], n_layers: int) -> tuple[int, int]:
        """(window in tokens, number of layers using it); (0, 0) without sliding attention."""
        return 0, 0

    def moe_shape(self, config: Mapping[str, Any] | Any) -> MoEShape | None:
        """The routed experts of a config dict or transformers config object; None when dense.

        A value that is not an integer (absent, or malformed) is None.
        """
        if not self.experts:
            return None
        if isinstance(config, Mapping):
            get = config.get
        else:
            def get(name: str) -> Any:
                return getattr(config, name, None)

        def count(key: str) -> int | None:
            value = get(self.field(key))
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return MoEShape(count("num_experts"), count("top_k"), count("moe_intermediate_size"),
                        count("hidden_size"))


#: Optional fields every family reads (see :attr:`Family.optional`).
_COMMON_OPTIONAL = ("head_dim", "max_position_embeddings", "tie_word_embeddings")

#: model_type -> its adapter, in registration order.
FAMILIES: dict[str, Family] = {}
#: model_type of a wrapping config (its text model under ``text_config``) -> the family's.
WRAPPED_TYPES: dict[str, str] = {}


def register(cls: type[Family]) -> type[Family]:
    """Register an adapter under its ``model_type`` (a class decorator)."""
    if cls.model_type in FAMILIES or cls.model_type in WRAPPED_TYPES:
        raise ValueError(f"model_type '{cls.model_type}' is registered twice")
    FAMILIES[cls.model_type] = cls()
    for wrapper in cls.wrappers:
        WRAPPED_TYPES[wrapper] = cls.model_type
    return cls


def family(model_type: Any) -> Family:
    """The adapter of a ``model_type``; :class:`InputError` when none is registered."""
    found = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if found is None:
        raise InputError(f"unsupported model_type '{model_type}'")
    return found


def config_field(model_type: str, key: str) -> str:
    """The config field a friendly name maps to for this ``model_type`` (raw fields unchanged;
    a type without an adapter maps as most families do)."""
    found = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if found is not None:
        return found.field(key)
    return KNOBS[key].field if key in KNOBS else key


# ----- shared rules of several families


def _qwen_moe_layers(cfg: Mapping[str, Any], n_layers: int) -> int:
    """MoE layers under the Qwen-MoE convention (decoder_sparse_step, mlp_only_layers)."""
    step = _int(cfg, "decoder_sparse_step", 1, minimum=1)
    only_dense = _layer_indices(cfg, "mlp_only_layers", n_layers) or set()
    return sum(1 for i in range(n_layers) if i not in only_dense and (i + 1) % step == 0)


def _qwen_moe(cfg: Mapping[str, Any], spec: dict[str, Any], top_k: int) -> None:
    """The layers and experts of Qwen2-MoE and Qwen3-MoE."""
    n_layers = spec["n_layers"]
    n_moe = _qwen_moe_layers(cfg, n_layers)
    spec["n_dense_layers"] = n_layers - n_moe
    spec["dense_intermediate"] = _int(cfg, "intermediate_size") if n_moe < n_layers else 0
    spec["moe"] = dict(n_experts=_int(cfg, "num_experts"), top_k=top_k,
                       expert_intermediate=_int(cfg, "moe_intermediate_size"))


class _SlidingWindow(Family):
    """One window on every layer, from ``sliding_window`` (absent or 0: none)."""

    default_window: ClassVar[int] = 0  # what an absent ``sliding_window`` means

    def window(self, cfg: Mapping[str, Any], n_layers: int) -> tuple[int, int]:
        w = _int(cfg, "sliding_window", 0) if not self.default_window or "sliding_window" in cfg \
            else self.default_window
        return (w, n_layers) if w else (0, 0)


class _QwenWindow(Family):
    """Sliding attention only under ``use_sliding_window``; which layers slide, as transformers
    decides: every layer (Qwen3-MoE), the even-indexed layers below ``max_window_layers``
    (Qwen2-MoE), the layers from ``max_window_layers`` on (Qwen2, Qwen3); an explicit
    ``layer_types`` list wins (not Qwen3-MoE)."""

    sliding_layers: ClassVar[str]  # "all", "even_below" or "from"

    def window(self, cfg: Mapping[str, Any], n_layers: int) -> tuple[int, int]:
        if not _bool(cfg, "use_sliding_window", False):
            return 0, 0
        w = _int(cfg, "sliding_window", 0) if "sliding_window" in cfg else 4096
        if not w:
            return 0, 0
        if self.sliding_layers == "all":
            return w, n_layers
        types = _layer_types(cfg, n_layers, ("full_attention", "sliding_attention"))
        if types is not None:
            return w, sum(t == "sliding_attention" for t in types)
        max_window_layers = _int(cfg, "max_window_layers", 28)
        if self.sliding_layers == "even_below":
            return w, sum(1 for i in range(n_layers) if i % 2 == 0 and i < max_window_layers)
        return w, max(0, n_layers - max_window_layers)


_QWEN_WINDOW_FIELDS = ("sliding_window", "use_sliding_window", "max_window_layers")
#: Friendly names of the families whose experts are ``num_local_experts`` FFNs of
#: ``intermediate_size``.
#: Families whose experts are their only MLP keep the expert width in ``intermediate_size``: a
#: dense width names a field they never read, so ``--set dense_intermediate_size`` is refused.
_NO_DENSE_MLP = {"dense_intermediate_size": "dense_intermediate_size"}
_LOCAL_EXPERTS = {"num_experts": "num_local_experts", **{k: "intermediate_size" for k in _EXPERT_WIDTH},
                  **_NO_DENSE_MLP}


def _local_experts(cfg: Mapping[str, Any], top_k: int, **extra: Any) -> dict[str, Any]:
    """The routed experts of those families."""
    return dict(n_experts=_int(cfg, "num_local_experts"), top_k=top_k,
                expert_intermediate=_int(cfg, "intermediate_size"), **extra)


# ----- MoE families


@register
class Mixtral(_SlidingWindow):
    model_type = "mixtral"
    hf_architecture = vllm_architecture = "MixtralForCausalLM"
    renamed = _LOCAL_EXPERTS
    optional = ("sliding_window",)

    def configure(self, cfg, spec, top_k):
        spec["moe"] = _local_experts(cfg, top_k)


@register
class Qwen2Moe(_QwenWindow):
    model_type = "qwen2_moe"
    hf_architecture = vllm_architecture = "Qwen2MoeForCausalLM"
    sliding_layers = "even_below"
    optional = ("shared_expert_intermediate_size", "qkv_bias", "norm_topk_prob", "decoder_sparse_step",
                "moe_intermediate_size", *_QWEN_WINDOW_FIELDS)
    per_layer = ("layer_types", "mlp_only_layers")

    def configure(self, cfg, spec, top_k):
        _qwen_moe(cfg, spec, top_k)
        spec["attention"].update(qkv_bias=_bool(cfg, "qkv_bias", True), o_bias=False)
        shared = _int(cfg, "shared_expert_intermediate_size", 0)
        if shared:
            spec["moe"].update(n_shared=1, shared_intermediate=shared, shared_gate=True)


@register
class Qwen3Moe(_QwenWindow):
    model_type = "qwen3_moe"
    hf_architecture = vllm_architecture = "Qwen3MoeForCausalLM"
    attention_bias = False
    sliding_layers = "all"
    optional = ("attention_bias", "norm_topk_prob", "decoder_sparse_step", "moe_intermediate_size",
                *_QWEN_WINDOW_FIELDS)
    per_layer = ("mlp_only_layers",)

    def configure(self, cfg, spec, top_k):
        _qwen_moe(cfg, spec, top_k)
        spec["attention"].update(qk_norm="per_head")


class _DeepSeek(Family):
    """DeepSeek-V2/V3: MLA, shared experts of the routed width, the first layers dense."""

    mla = True
    attention_bias = False
    renamed = {"num_experts": "n_routed_experts"}
    optional = ("attention_bias", "n_shared_experts", "first_k_dense_replace", "norm_topk_prob",
                "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                "moe_intermediate_size", "moe_layer_freq")

    def configure(self, cfg, spec, top_k):
        n_layers = spec["n_layers"]
        first_dense = _int(cfg, "first_k_dense_replace", 0)
        if first_dense > n_layers:
            raise InputError(f"config field 'first_k_dense_replace' ({first_dense}) exceeds num_hidden_layers "
                             f"({n_layers})")
        freq = _int(cfg, "moe_layer_freq", 1, minimum=1)
        n_moe = sum(1 for i in range(first_dense, n_layers) if i % freq == 0)
        spec["n_dense_layers"] = n_layers - n_moe
        spec["dense_intermediate"] = _int(cfg, "intermediate_size") if spec["n_dense_layers"] else 0
        n_shared = _int(cfg, "n_shared_experts", 0)
        moe_I = _int(cfg, "moe_intermediate_size")
        spec["moe"] = dict(n_experts=_int(cfg, "n_routed_experts"), top_k=top_k, expert_intermediate=moe_I,
                           n_shared=n_shared, shared_intermediate=moe_I if n_shared else 0)
        nope, rope = _int(cfg, "qk_nope_head_dim", 128), _int(cfg, "qk_rope_head_dim", 64)
        bias = spec["attention"]["qkv_bias"]
        spec["attention"] = dict(
            kind="mla", n_heads=spec["attention"]["n_heads"], n_kv_heads=spec["attention"]["n_heads"],
            head_dim=nope + rope, o_bias=bias, qkv_bias=bias,
            q_lora_rank=_int(cfg, "q_lora_rank", 0), kv_lora_rank=_int(cfg, "kv_lora_rank", 512),
            qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=_int(cfg, "v_head_dim", 128),
        )


@register
class DeepseekV2(_DeepSeek):
    model_type = "deepseek_v2"
    hf_architecture = vllm_architecture = "DeepseekV2ForCausalLM"
    optional = (*_DeepSeek.optional, "mlp_bias")

    def configure(self, cfg, spec, top_k):
        if _bool(cfg, "mlp_bias", False):
            raise InputError("mlp_bias = true is not modelled for deepseek_v2 (biases on the "
                             "dense and shared-expert MLPs)")
        super().configure(cfg, spec, top_k)


@register
class DeepseekV3(_DeepSeek):
    model_type = "deepseek_v3"
    hf_architecture = vllm_architecture = "DeepseekV3ForCausalLM"


@register
class Olmoe(Family):
    model_type = "olmoe"
    hf_architecture = vllm_architecture = "OlmoeForCausalLM"
    attention_bias = False
    renamed = {**{k: "intermediate_size" for k in _EXPERT_WIDTH}, **_NO_DENSE_MLP}
    optional = ("attention_bias", "norm_topk_prob")

    def configure(self, cfg, spec, top_k):
        spec["moe"] = dict(n_experts=_int(cfg, "num_experts"), top_k=top_k,
                           expert_intermediate=_int(cfg, "intermediate_size"))
        spec["attention"].update(qk_norm="full_width")


@register
class Phimoe(_SlidingWindow):
    model_type = "phimoe"
    hf_architecture = "PhimoeForCausalLM"
    vllm_architecture = "PhiMoEForCausalLM"
    attention_bias = False
    renamed = _LOCAL_EXPERTS
    optional = ("attention_bias", "lm_head_bias", "sliding_window")

    def configure(self, cfg, spec, top_k):
        spec["moe"] = _local_experts(cfg, top_k)
        spec["norm"], spec["lm_head_bias"] = "layer", _bool(cfg, "lm_head_bias", False)


@register
class GptOss(Family):
    model_type = "gpt_oss"
    hf_architecture = vllm_architecture = "GptOssForCausalLM"
    attention_bias = True
    renamed = _LOCAL_EXPERTS
    optional = ("attention_bias", "sliding_window")
    per_layer = ("layer_types",)

    def configure(self, cfg, spec, top_k):
        spec["moe"] = _local_experts(cfg, top_k, router_bias=True, expert_bias=True)
        spec["attention"].update(sinks=True)

    def window(self, cfg, n_layers):
        """Sliding and full layers alternate (``layer_types``, else every other one)."""
        types = _layer_types(cfg, n_layers, ("full_attention", "sliding_attention"))
        n = sum(t == "sliding_attention" for t in types) if types is not None else (n_layers + 1) // 2
        return _int(cfg, "sliding_window", 128, minimum=1), n


@register
class Llama4Text(Family):
    model_type = "llama4_text"
    hf_architecture = vllm_architecture = "Llama4ForCausalLM"
    attention_bias = False
    renamed = {**_LOCAL_EXPERTS, "dense_intermediate_size": "intermediate_size_mlp"}
    optional = ("attention_bias", "interleave_moe_layer_step", "attention_chunk_size", "use_qk_norm",
                "intermediate_size_mlp", "no_rope_layer_interval")
    per_layer = ("layer_types", "no_rope_layers", "moe_layers")
    wrappers = ("llama4",)

    def configure(self, cfg, spec, top_k):
        n_layers = spec["n_layers"]
        moe_layers = _layer_indices(cfg, "moe_layers", n_layers)
        if moe_layers is not None:
            n_moe = len(moe_layers)
        else:
            step = _int(cfg, "interleave_moe_layer_step", 1, minimum=1)
            if step > n_layers:
                raise InputError(f"config field 'interleave_moe_layer_step' ({step}) exceeds num_hidden_layers "
                                 f"({n_layers}): no layer would route to experts")
            n_moe = sum(1 for i in range(n_layers) if (i + 1) % step == 0)
        spec["n_dense_layers"] = n_layers - n_moe
        spec["dense_intermediate"] = _int(cfg, "intermediate_size_mlp") if spec["n_dense_layers"] else 0
        moe_I = _int(cfg, "intermediate_size")
        spec["moe"] = dict(n_experts=_int(cfg, "num_local_experts"), top_k=top_k, expert_intermediate=moe_I,
                           n_shared=1, shared_intermediate=moe_I)
        if _bool(cfg, "use_qk_norm", True):
            spec["attention"].update(qk_norm="weightless")

    def window(self, cfg, n_layers):
        """Chunked attention on the RoPE layers (``layer_types``, ``no_rope_layers``, or all but
        every ``no_rope_layer_interval``-th)."""
        chunk = _int(cfg, "attention_chunk_size", 8192, minimum=1)
        types = _layer_types(cfg, n_layers, ("full_attention", "chunked_attention"))
        if types is not None:
            return chunk, sum(t == "chunked_attention" for t in types)
        no_rope = _layer_flags(cfg, "no_rope_layers", n_layers)
        if no_rope is not None:  # 1 marks a RoPE layer, which is the chunked one
            return chunk, sum(1 for flag in no_rope if flag)
        interval = _int(cfg, "no_rope_layer_interval", 4, minimum=1)
        return chunk, sum(1 for i in range(n_layers) if (i + 1) % interval != 0)


# ----- dense baselines


class _Dense(Family):
    """Every layer a dense MLP of ``intermediate_size``."""

    experts = False

    def configure(self, cfg, spec, top_k):
        spec["n_dense_layers"] = spec["n_layers"]
        spec["dense_intermediate"] = _int(cfg, "intermediate_size")


@register
class Llama(_Dense):
    model_type = "llama"
    hf_architecture = vllm_architecture = "LlamaForCausalLM"
    attention_bias = False
    optional = ("attention_bias", "mlp_bias")

    def configure(self, cfg, spec, top_k):
        super().configure(cfg, spec, top_k)
        spec["mlp_bias"] = _bool(cfg, "mlp_bias", False)


@register
class Mistral(_Dense, _SlidingWindow):
    model_type = "mistral"
    hf_architecture = vllm_architecture = "MistralForCausalLM"
    default_window = 4096  # transformers' MistralConfig; Mixtral and PhiMoE default to none
    optional = ("sliding_window",)


@register
class Qwen2(_Dense, _QwenWindow):
    model_type = "qwen2"
    hf_architecture = vllm_architecture = "Qwen2ForCausalLM"
    sliding_layers = "from"
    optional = _QWEN_WINDOW_FIELDS
    per_layer = ("layer_types",)

    def configure(self, cfg, spec, top_k):
        super().configure(cfg, spec, top_k)
        spec["attention"].update(qkv_bias=True, o_bias=False)


@register
class Qwen3(_Dense, _QwenWindow):
    model_type = "qwen3"
    hf_architecture = vllm_architecture = "Qwen3ForCausalLM"
    attention_bias = False
    sliding_layers = "from"
    optional = ("attention_bias", *_QWEN_WINDOW_FIELDS)
    per_layer = ("layer_types",)

    def configure(self, cfg, spec, top_k):
        super().configure(cfg, spec, top_k)
        spec["attention"].update(qk_norm="per_head")


# --------------------------------------------------------------------------- derived tables

#: Model types the symbolic model understands (MoE families and dense baselines).
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
#: Per-layer list fields of any family, dropped from a config when the layer count changes.
PER_LAYER_FIELDS = tuple(dict.fromkeys(f for fam in FAMILIES.values() for f in fam.per_layer))
#: Config fields a zoo entry may leave to its family's default but a user may set.
OPTIONAL_FIELDS = frozenset({*_COMMON_OPTIONAL, *PER_LAYER_FIELDS,
                             *(f for fam in FAMILIES.values() for f in fam.optional)})
#: Friendly names only a model with routed experts has.
EXPERT_KNOBS = tuple(k.name for k in KNOBS.values() if k.experts)
#: Config fields of those names in any family, less those a dense family also reads.
EXPERT_FIELDS = frozenset(
    {fam.field(k) for fam in FAMILIES.values() if fam.experts for k in EXPERT_KNOBS}
    - {fam.field(k) for fam in FAMILIES.values() if not fam.experts for k in KNOBS if k not in EXPERT_KNOBS})
