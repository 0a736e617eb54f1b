"""The normalized architecture of a model: what the cost formulas need, nothing else.

:func:`model_from_config` reads a Hugging Face config dict (see :mod:`perfmodel.specs.zoo`)
of any supported ``model_type`` and returns a :class:`ModelSpec`. What each architecture reads,
with the defaults of its transformers configuration class (so a config.json that omits a field
means what it means to transformers), is its adapter's in :mod:`perfmodel.specs.families`;
this module validates the result. Sizes are counts of elements (not bytes).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from perfmodel.errors import InputError, validation_message
from perfmodel.specs.families import KNOBS, MAX_INT, family
from perfmodel.specs.zoo import load_hf_config

__all__ = ["MAX_INT", "AttentionSpec", "MoESpec", "ModelSpec", "load_model", "model_from_config"]


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
    quantization: str | None = Field(
        default=None, description="The quantization scheme its checkpoint is stored in (config.json "
        "quantization_config, :func:`perfmodel.quantization.checkpoint_scheme`); None: unquantized.")
    unread_quantization: str | None = Field(
        default=None, description="The quant_method of a config.json quantization_config that no scheme "
        "describes ('?' where it names none): the model is predicted at --dtype; None otherwise.")

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


def model_from_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Normalize a Hugging Face config dict into a :class:`ModelSpec`, by the adapter of its
    ``model_type`` (:mod:`perfmodel.specs.families`)."""
    from perfmodel.quantization import checkpoint_scheme

    adapter = family(cfg.get("model_type", ""))
    fields = adapter.spec_fields(cfg)
    attention, moe = fields.pop("attention"), fields.pop("moe")
    try:
        # the scheme its checkpoint is stored in, else (a format no scheme describes) its method
        block = cfg.get("quantization_config")
        stored = checkpoint_scheme(block)
        unread = None if block is None or stored is not None else str(
            (block.get("quant_method") if isinstance(block, dict) else None) or "?")
        return ModelSpec(name=name, attention=AttentionSpec(**attention),
                         moe=MoESpec(**moe) if moe else None, quantization=stored,
                         unread_quantization=unread, **fields)
    except ValidationError as exc:
        raise InputError(f"invalid model: {_config_message(exc, adapter)}") from None


def _config_message(exc: ValidationError, adapter) -> str:
    """A spec's validation error as one line in the config's terms: the config field behind the
    spec field that failed (``num_key_value_heads``, not ``n_kv_heads``), where a knob names it."""
    err = exc.errors()[0]
    leaf = str(err["loc"][-1]) if err["loc"] else None
    for knob in KNOBS.values():
        if knob.spec and knob.spec[-1] == leaf:
            return f"config field '{adapter.field(knob.name)}': {err['msg'].removeprefix('Value error, ')}"
    return validation_message(exc)


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
