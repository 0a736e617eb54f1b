"""The normalized architecture of a model: what the cost formulas need, nothing else.

:func:`model_from_config` reads a Hugging Face config dict (see :mod:`perfmodel.specs.zoo`)
of any supported ``model_type`` and returns a :class:`ModelSpec`. Defaults follow each
architecture's transformers configuration class, so a config.json that omits a field means
what it means to transformers. Sizes are counts of elements (not bytes).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from perfmodel.errors import InputError
from perfmodel.specs.zoo import load_hf_config


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttentionSpec(_Spec):
    """Self-attention of one layer."""

    kind: Literal["gqa", "mla"]
    n_heads: PositiveInt
    n_kv_heads: PositiveInt = Field(description="KV heads (GQA); equals n_heads for MLA.")
    head_dim: PositiveInt = Field(description="Q/K/V head width (GQA); qk_nope+qk_rope for MLA.")
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: Literal["none", "per_head", "full_width", "weightless"] = Field(
        default="none",
        description="per_head: RMSNorm(head_dim) on q and k; full_width: RMSNorm over the whole "
        "q and k projections (OLMoE); weightless: L2 norm without parameters (Llama 4).",
    )
    sinks: bool = Field(default=False, description="One learned attention-sink logit per head.")
    # MLA (DeepSeek-V2/V3); zero when kind == "gqa".
    q_lora_rank: int = Field(default=0, ge=0, description="0: queries projected directly.")
    kv_lora_rank: int = Field(default=0, ge=0)
    qk_nope_head_dim: int = Field(default=0, ge=0)
    qk_rope_head_dim: int = Field(default=0, ge=0)
    v_head_dim: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AttentionSpec:
        if self.kind == "gqa" and self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.n_heads}) must be a multiple of "
                f"num_key_value_heads ({self.n_kv_heads})"
            )
        if self.kind == "mla" and min(self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim,
                                      self.v_head_dim) <= 0:
            raise ValueError("MLA needs positive kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim "
                             "and v_head_dim")
        return self


class MoESpec(_Spec):
    """The routed and shared experts of one MoE layer (gated FFNs)."""

    n_experts: PositiveInt
    top_k: PositiveInt
    expert_intermediate: PositiveInt = Field(description="Per-expert FFN width.")
    n_shared: int = Field(default=0, ge=0, description="Shared experts (always active).")
    shared_intermediate: int = Field(
        default=0, ge=0, description="Width of each shared expert."
    )
    shared_gate: bool = Field(default=False, description="Sigmoid gate Linear(H, 1) on shared.")
    router_bias: bool = False
    expert_bias: bool = Field(default=False, description="Biases on expert projections.")

    @model_validator(mode="after")
    def _check(self) -> MoESpec:
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.n_experts})")
        if self.n_shared and not self.shared_intermediate:
            raise ValueError("shared experts need a positive intermediate size")
        return self


class ModelSpec(_Spec):
    """A decoder-only transformer, dense or MoE, as the cost model sees it."""

    name: str
    model_type: str
    hidden: PositiveInt
    vocab: PositiveInt
    n_layers: PositiveInt
    n_dense_layers: int = Field(ge=0, description="Layers with a dense MLP instead of MoE.")
    dense_intermediate: int = Field(ge=0, description="Dense-MLP width (0 if no dense layers).")
    mlp_bias: bool = False
    attention: AttentionSpec
    moe: MoESpec | None = None
    norm: Literal["rms", "layer"] = "rms"
    tie_embeddings: bool = False
    lm_head_bias: bool = False
    window: int = Field(default=0, ge=0, description="Sliding/chunked window, tokens (0: none).")
    n_window_layers: int = Field(default=0, ge=0, description="Layers that use the window.")
    max_position: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.n_dense_layers > self.n_layers:
            raise ValueError("more dense layers than layers")
        if self.moe is None and self.n_dense_layers != self.n_layers:
            raise ValueError("a model without experts must be all dense layers")
        if self.n_dense_layers and not self.dense_intermediate:
            raise ValueError("dense layers need a positive intermediate_size")
        if self.n_window_layers > self.n_layers:
            raise ValueError("more windowed layers than layers")
        if self.n_window_layers and not self.window:
            raise ValueError("windowed layers need a positive window")
        return self

    @property
    def n_moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return self.n_layers - self.n_dense_layers

    @property
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return self.moe is not None and self.n_moe_layers > 0


def _get(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


#: Largest integer a count may be (float64 holds every integer up to it exactly).
MAX_INT = 2**53


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


def _int(cfg: dict[str, Any], key: str, default: Any = None, minimum: int = 0) -> int:
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


def _bool(cfg: dict[str, Any], key: str, default: bool) -> bool:
    value = _get(cfg, key, default)
    if not isinstance(value, bool):
        raise InputError(f"config field '{key}' must be true or false, got {_shown(value)}")
    return value


def _per_layer(cfg: dict[str, Any], key: str, n_layers: int) -> list[Any] | None:
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


def _layer_types(cfg: dict[str, Any], n_layers: int, allowed: tuple[str, ...]) -> list[str] | None:
    """``layer_types``: one attention kind per layer, each one of ``allowed``."""
    types = _per_layer(cfg, "layer_types", n_layers)
    bad = [t for t in types or [] if t not in allowed]
    if bad:
        raise InputError(f"config field 'layer_types' holds {_shown(bad[0])}; "
                         f"each entry must be one of {', '.join(allowed)}")
    return types


def _layer_flags(cfg: dict[str, Any], key: str, n_layers: int) -> list[int] | None:
    """A per-layer list of 0/1 flags (an empty list counts as absent, as in transformers)."""
    flags = _get(cfg, key, None)
    if flags == []:
        return None
    flags = _per_layer(cfg, key, n_layers)
    if flags is not None and any(not (_is_int(f) or isinstance(f, bool)) or f not in (0, 1)
                                 for f in flags):
        raise InputError(f"config field '{key}' must hold only 0 or 1, one per layer")
    return flags


def _layer_indices(cfg: dict[str, Any], key: str, n_layers: int) -> set[int] | None:
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


def _moe_layer_count(cfg: dict[str, Any], n_layers: int) -> int:
    """MoE layers under the Qwen-MoE convention (decoder_sparse_step, mlp_only_layers)."""
    step = _int(cfg, "decoder_sparse_step", 1, minimum=1)
    only_dense = _layer_indices(cfg, "mlp_only_layers", n_layers) or set()
    return sum(1 for i in range(n_layers) if i not in only_dense and (i + 1) % step == 0)


def _window_layers(cfg: dict[str, Any], mt: str, n_layers: int) -> tuple[int, int]:
    """(window, number of layers using it) for sliding or chunked attention."""
    if mt == "gpt_oss":
        types = _layer_types(cfg, n_layers, ("full_attention", "sliding_attention"))
        n = sum(t == "sliding_attention" for t in types) if types is not None else (n_layers + 1) // 2
        return _int(cfg, "sliding_window", 128, minimum=1), n
    if mt == "llama4_text":
        chunk = _int(cfg, "attention_chunk_size", 8192, minimum=1)
        types = _layer_types(cfg, n_layers, ("full_attention", "chunked_attention"))
        if types is not None:
            return chunk, sum(t == "chunked_attention" for t in types)
        no_rope = _layer_flags(cfg, "no_rope_layers", n_layers)
        if no_rope is not None:  # 1 marks a RoPE layer, which is the chunked one
            return chunk, sum(1 for flag in no_rope if flag)
        interval = _int(cfg, "no_rope_layer_interval", 4, minimum=1)
        return chunk, sum(1 for i in range(n_layers) if (i + 1) % interval != 0)
    if mt in ("mixtral", "mistral", "phimoe"):
        # transformers' MistralConfig defaults to a 4096 window; Mixtral and PhiMoE to none
        w = _int(cfg, "sliding_window", 0) if mt != "mistral" or "sliding_window" in cfg else 4096
        return (w, n_layers) if w else (0, 0)
    if mt in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and _bool(cfg, "use_sliding_window", False):
        # Which layers slide, as transformers decides: every layer (Qwen3-MoE), the
        # even-indexed layers below max_window_layers (Qwen2-MoE), the layers from
        # max_window_layers on (Qwen2, Qwen3); an explicit layer_types list wins (not Qwen3-MoE).
        w = _int(cfg, "sliding_window", 0) if "sliding_window" in cfg else 4096
        if not w:
            return 0, 0
        if mt == "qwen3_moe":
            return w, n_layers
        types = _layer_types(cfg, n_layers, ("full_attention", "sliding_attention"))
        if types is not None:
            return w, sum(t == "sliding_attention" for t in types)
        max_window_layers = _int(cfg, "max_window_layers", 28)
        if mt == "qwen2_moe":
            return w, sum(1 for i in range(n_layers) if i % 2 == 0 and i < max_window_layers)
        return w, max(0, n_layers - max_window_layers)
    return 0, 0


_DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ATTENTION_BIAS_TYPES = ("llama", "qwen3", "qwen3_moe", "olmoe", "phimoe", "gpt_oss", "llama4_text",
                         "deepseek_v2", "deepseek_v3")


def model_from_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Normalize a Hugging Face config dict into a :class:`ModelSpec`."""
    mt = cfg.get("model_type", "")
    H = _int(cfg, "hidden_size")
    n_layers = _int(cfg, "num_hidden_layers")
    n_heads = _int(cfg, "num_attention_heads")
    if n_heads == 0 or H == 0 or n_layers == 0:
        raise InputError("hidden_size, num_hidden_layers and num_attention_heads must be positive")
    mla = mt in ("deepseek_v2", "deepseek_v3")
    top_k = _int(cfg, "num_experts_per_tok", 0) if mt not in _DENSE_TYPES else 0
    # Families whose transformers attention takes its biases from attention_bias (the others
    # fix them); gpt-oss defaults to biases.
    attn_bias = _bool(cfg, "attention_bias", mt == "gpt_oss") if mt in _ATTENTION_BIAS_TYPES else False
    attention: dict[str, Any] = dict(kind="gqa", n_heads=n_heads, qkv_bias=attn_bias, o_bias=attn_bias)
    if not mla:  # MLA's head widths are its own fields
        attention.update(n_kv_heads=_int(cfg, "num_key_value_heads", n_heads),
                         head_dim=_int(cfg, "head_dim", H // n_heads))
    moe: dict[str, Any] | None = None
    dense_layers, dense_I = 0, 0
    norm, lm_head_bias, mlp_bias = "rms", False, False

    if mt in _DENSE_TYPES:
        dense_layers, dense_I = n_layers, _int(cfg, "intermediate_size")
        mlp_bias = _bool(cfg, "mlp_bias", False) if mt == "llama" else False
        if mt == "qwen2":
            attention.update(qkv_bias=True, o_bias=False)
        if mt == "qwen3":
            attention.update(qk_norm="per_head")
    elif mt in ("mixtral", "phimoe"):
        moe = dict(n_experts=_int(cfg, "num_local_experts"), top_k=top_k,
                   expert_intermediate=_int(cfg, "intermediate_size"))
        if mt == "phimoe":
            norm, lm_head_bias = "layer", _bool(cfg, "lm_head_bias", False)
    elif mt in ("qwen2_moe", "qwen3_moe"):
        n_moe = _moe_layer_count(cfg, n_layers)
        dense_layers, dense_I = n_layers - n_moe, _int(cfg, "intermediate_size") if n_moe < n_layers else 0
        moe = dict(n_experts=_int(cfg, "num_experts"), top_k=top_k,
                   expert_intermediate=_int(cfg, "moe_intermediate_size"))
        if mt == "qwen2_moe":
            attention.update(qkv_bias=_bool(cfg, "qkv_bias", True), o_bias=False)
            shared = _int(cfg, "shared_expert_intermediate_size", 0)
            if shared:
                moe.update(n_shared=1, shared_intermediate=shared, shared_gate=True)
        else:
            attention.update(qk_norm="per_head")
    elif mt == "olmoe":
        moe = dict(n_experts=_int(cfg, "num_experts"), top_k=top_k,
                   expert_intermediate=_int(cfg, "intermediate_size"))
        attention.update(qk_norm="full_width")
    elif mt in ("deepseek_v2", "deepseek_v3"):
        if mt == "deepseek_v2" and _bool(cfg, "mlp_bias", False):
            raise InputError("mlp_bias = true is not modelled for deepseek_v2 (biases on the "
                             "dense and shared-expert MLPs)")
        first_dense = min(_int(cfg, "first_k_dense_replace", 0), n_layers)
        freq = _int(cfg, "moe_layer_freq", 1, minimum=1)
        n_moe = sum(1 for i in range(first_dense, n_layers) if i % freq == 0)
        dense_layers = n_layers - n_moe
        dense_I = _int(cfg, "intermediate_size") if dense_layers else 0
        n_shared = _int(cfg, "n_shared_experts", 0)
        moe_I = _int(cfg, "moe_intermediate_size")
        moe = dict(n_experts=_int(cfg, "n_routed_experts"), top_k=top_k, expert_intermediate=moe_I,
                   n_shared=n_shared, shared_intermediate=moe_I if n_shared else 0)
        nope, rope = _int(cfg, "qk_nope_head_dim", 128), _int(cfg, "qk_rope_head_dim", 64)
        attention = dict(
            kind="mla", n_heads=n_heads, n_kv_heads=n_heads, head_dim=nope + rope,
            o_bias=attn_bias, qkv_bias=attn_bias,
            q_lora_rank=_int(cfg, "q_lora_rank", 0), kv_lora_rank=_int(cfg, "kv_lora_rank", 512),
            qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=_int(cfg, "v_head_dim", 128),
        )
    elif mt == "gpt_oss":
        moe = dict(n_experts=_int(cfg, "num_local_experts"), top_k=top_k,
                   expert_intermediate=_int(cfg, "intermediate_size"),
                   router_bias=True, expert_bias=True)
        attention.update(sinks=True)
    elif mt == "llama4_text":
        moe_layers = _layer_indices(cfg, "moe_layers", n_layers)
        if moe_layers is not None:
            n_moe = len(moe_layers)
        else:
            step = _int(cfg, "interleave_moe_layer_step", 1, minimum=1)
            n_moe = sum(1 for i in range(n_layers) if (i + 1) % step == 0)
        dense_layers = n_layers - n_moe
        dense_I = _int(cfg, "intermediate_size_mlp") if dense_layers else 0
        moe_I = _int(cfg, "intermediate_size")
        moe = dict(n_experts=_int(cfg, "num_local_experts"), top_k=top_k, expert_intermediate=moe_I,
                   n_shared=1, shared_intermediate=moe_I)
        if _bool(cfg, "use_qk_norm", True):
            attention.update(qk_norm="weightless")
    else:
        raise InputError(f"unsupported model_type '{mt}'")

    if moe is not None and moe["top_k"] <= 0:
        raise InputError("num_experts_per_tok (top_k) must be positive")
    window, n_window = _window_layers(cfg, mt, n_layers)
    try:
        return ModelSpec(
            name=name, model_type=mt, hidden=H, vocab=_int(cfg, "vocab_size"), n_layers=n_layers,
            n_dense_layers=dense_layers, dense_intermediate=dense_I, mlp_bias=mlp_bias,
            attention=AttentionSpec(**attention), moe=MoESpec(**moe) if moe else None, norm=norm,
            tie_embeddings=_bool(cfg, "tie_word_embeddings", False),
            lm_head_bias=lm_head_bias, window=window, n_window_layers=n_window,
            max_position=_int(cfg, "max_position_embeddings", 0),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(f"invalid model: {loc + ': ' if loc else ''}{msg}") from None


class _ReadRecorder(dict):
    """A config dict that records which fields were looked up."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)


def load_model(model: str, overrides: list[str] | dict[str, Any] | None = None) -> ModelSpec:
    """A zoo name, alias or config.json path, with ``--set`` overrides, as a :class:`ModelSpec`.

    An override of a field the architecture does not read (as configured: e.g. a sliding
    window while sliding is off) is refused, since it would change nothing.
    """
    from perfmodel.specs.zoo import config_field, override_items, zoo

    cfg = load_hf_config(model, overrides)
    entry = zoo().get(model.lower())
    recorder = _ReadRecorder(cfg)
    spec = model_from_config(recorder, name=entry.name if entry else model)
    items = override_items(overrides or [])
    # friendly names map by the architecture the overrides were applied to
    model_type = load_hf_config(model)["model_type"] if "model_type" in dict(items) else cfg["model_type"]
    for key, _ in items:
        field = config_field(model_type, key)
        if field not in recorder.read:
            raise InputError(f"--set {key}: this {spec.model_type} model does not use '{field}', "
                             "so setting it would change nothing")
    return spec
