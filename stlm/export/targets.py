"""Which transformers architecture an stlm model is, and its weights under that architecture's names.

    target = choose_target(cfg.model)            # LLAMA, QWEN3 or GPT2; StlmError when none is exact
    hf_config = target.hf_config(cfg.model, tokenizer)
    state = target.state_dict(model)             # {transformers name: tensor}

    stlm                                        transformers
    rope + swiglu + rmsnorm (+ linear biases)   LlamaForCausalLM (theta, eps, GQA/MQA, attention_bias = mlp_bias)
    the same with qk_norm                       Qwen3ForCausalLM (RMSNorm on the head dim before RoPE, as stlm)
    learned + gelu (tanh) + layernorm           GPT2LMHeadModel (gelu_pytorch_tanh: F.gelu(approximate="tanh"))

Why these are exact: stlm's RoPE is rotate-half with inv_freq = theta^(-2i/hd) and tables cat([f, f]),
which is HF's `rotate_half` layout, so q/k need no permutation; SDPA scales by 1/sqrt(head_dim) like
HF's attention; nothing scales embeddings or logits; each RMSNorm / LayerNorm keeps model.norm_eps.

Sharing is unrolled into the equivalent unshared model: applied layer l is block schedule[l] with its
FFN (shared FFNs copied into every layer that applies them, block_all / block_repeat blocks repeated in
schedule order), and an ffn_lora layer's adapter is merged into its FFN: W + B A. GPT-2 has no grouped
KV heads, so GQA/MQA keys and values are repeated per query head (what SDPA does) and a model without
biases gets zero biases: the function is the same, the exported parameter count is larger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stlm.config import ModelConfig
from stlm.errors import StlmError
from stlm.models import count_params
from stlm.models.layers.ffn import FFNS
from stlm.models.sharing import LoRAFFN

EXPORTABLE = (
    "model.positional=rope + model.ffn=swiglu + model.norm=rmsnorm (Llama; Qwen3 with model.qk_norm), "
    "or model.positional=learned + model.ffn=gelu + model.norm=layernorm (GPT-2), with model.embedder=token"
)

# Options that no transformers architecture computes exactly, with what they are.
NO_EQUIVALENT = {
    ("model.embedder", "byte_pooled"): "byte-pooled embedder and byte decoder head",
    ("model.positional", "alibi"): "ALiBi attention biases",
    ("model.positional", "sincos"): "fixed sinusoidal positions",
    ("model.positional", "none"): "no positional encoding (NoPE)",
    ("model.ffn", "relu2"): "ReLU-squared FFN",
    ("model.norm", "none"): "no normalization layers",
}


def _refuse(key: str, value, why: str) -> StlmError:
    return StlmError(
        f"stlm export: {key}={value} ({why}) has no exact equivalent in transformers, so this model "
        f"cannot be exported without changing what it computes. Exportable: {EXPORTABLE}; every "
        f"model.sharing mode, tied or untied embeddings, any tokenizer."
    )


def _need(cfg: ModelConfig, key: str, want, arch: str) -> None:
    value = getattr(cfg, key.split(".", 1)[1])
    if value != want:
        why = NO_EQUIVALENT.get((key, value), f"{arch} needs {key}={want}")
        raise _refuse(key, value, why)


# --------------------------------------------------------------------------- the unrolled layers


@dataclass
class Layer:
    """One applied layer of the core, with the FFN it computes (LoRA merged)."""

    block: torch.nn.Module
    ffn: dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # matrix name -> (weight [out, in], bias)


def _ffn_weights(ffn: torch.nn.Module, names) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    base, lora = (ffn.shared, ffn.lora) if isinstance(ffn, LoRAFFN) else (ffn, None)
    out = {}
    for name in names:
        lin = getattr(base, name)
        w = lin.weight
        if lora is not None:  # x W^T + (x A^T) B^T = x (W + B A)^T
            w = w + lora.B[name] @ lora.A[name]
        out[name] = (w, lin.bias)
    return out


def applied_layers(model) -> list[Layer]:
    """The core's blocks in schedule order: what an unshared model must hold, layer by layer."""
    names = list(FFNS[model.config.ffn].shapes(1, 1))  # the FFN's matrix names (w1, w3, w2 / fc, proj)
    return [Layer(model.core.blocks[i], _ffn_weights(model.core.blocks[i].ffn, names)) for i in model.core.schedule]


def _split_qkv(attn, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """stlm's fused qkv (weight or bias) -> q [H hd, ...], k [KV hd, ...], v [KV hd, ...]."""
    H, KV, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    return tuple(t.split([H * hd, KV * hd, KV * hd], dim=0))


def _head(model) -> torch.Tensor:
    return model.head.lm_head.weight


# --------------------------------------------------------------------------- Llama / Qwen3


def _check_llama(cfg: ModelConfig) -> None:
    _need(cfg, "model.ffn", "swiglu", "LlamaForCausalLM (RoPE models export as Llama)")
    _need(cfg, "model.norm", "rmsnorm", "LlamaForCausalLM (RoPE models export as Llama)")


def _check_qwen3(cfg: ModelConfig) -> None:
    _check_llama(cfg)
    if cfg.bias:
        raise _refuse(
            "model.bias", True, "Qwen3ForCausalLM, the transformers model with per-head QK-norm, has no FFN biases"
        )


def _llama_config(cfg: ModelConfig, n_layers: int, eot_id: int, *, qwen3: bool):
    # lazy: transformers (an optional extra), only when exporting
    import transformers

    common = dict(
        vocab_size=cfg.effective_vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.effective_ffn_dim,
        num_hidden_layers=n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.context_length,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_bias=cfg.bias, attention_dropout=cfg.dropout.attention, initializer_range=cfg.init_std,
        bos_token_id=eot_id, eos_token_id=eot_id, dtype="float32",
    )  # fmt: skip
    if qwen3:
        return transformers.Qwen3Config(**common, use_sliding_window=False, max_window_layers=n_layers)
    return transformers.LlamaConfig(**common, mlp_bias=cfg.bias)


def _llama_state(model) -> dict[str, torch.Tensor]:
    sd = {
        "model.embed_tokens.weight": model.embedder.wte.weight,
        "model.norm.weight": model.core.norm.weight,
        "lm_head.weight": _head(model),
    }
    for i, layer in enumerate(applied_layers(model)):
        b, p = layer.block, f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = b.norm1.weight
        sd[p + "post_attention_layernorm.weight"] = b.norm2.weight
        for part in ("weight", "bias"):
            t = getattr(b.attn.qkv, part)
            if t is not None:
                for name, x in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(b.attn, t)):
                    sd[p + f"self_attn.{name}.{part}"] = x
                sd[p + f"self_attn.o_proj.{part}"] = getattr(b.attn.proj, part)
        if b.attn.q_norm is not None:
            sd[p + "self_attn.q_norm.weight"] = b.attn.q_norm.weight
            sd[p + "self_attn.k_norm.weight"] = b.attn.k_norm.weight
        for stlm_name, hf_name in (
            ("w1", "gate_proj"),
            ("w3", "up_proj"),
            ("w2", "down_proj"),
        ):  # w2(silu(w1 x) * w3 x)
            w, bias = layer.ffn[stlm_name]
            sd[p + f"mlp.{hf_name}.weight"] = w
            if bias is not None:
                sd[p + f"mlp.{hf_name}.bias"] = bias
    return sd


# --------------------------------------------------------------------------- GPT-2


def _check_gpt2(cfg: ModelConfig) -> None:
    arch = "GPT2LMHeadModel (learned-position models export as GPT-2)"
    _need(cfg, "model.ffn", "gelu", arch)
    _need(cfg, "model.norm", "layernorm", arch)
    if cfg.qk_norm:
        raise _refuse("model.qk_norm", True, "GPT2LMHeadModel has no QK-norm")


def _gpt2_config(cfg: ModelConfig, n_layers: int, eot_id: int):
    # lazy: transformers (an optional extra), only when exporting
    import transformers

    return transformers.GPT2Config(
        vocab_size=cfg.effective_vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=n_layers,
        n_head=cfg.n_heads, n_inner=cfg.effective_ffn_dim, activation_function="gelu_pytorch_tanh",
        layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
        resid_pdrop=cfg.dropout.residual, embd_pdrop=cfg.dropout.embedding, attn_pdrop=cfg.dropout.attention,
        bos_token_id=eot_id, eos_token_id=eot_id, dtype="float32",
    )  # fmt: skip


def _or_zeros(bias: torch.Tensor | None, n: int) -> torch.Tensor:
    return bias if bias is not None else torch.zeros(n)


def _gpt2_state(model) -> dict[str, torch.Tensor]:
    d = model.config.d_model
    sd = {
        "transformer.wte.weight": model.embedder.wte.weight,
        "transformer.wpe.weight": model.core.pos.wpe.weight,
        "transformer.ln_f.weight": model.core.norm.weight,
        "transformer.ln_f.bias": _or_zeros(model.core.norm.bias, d),
        "lm_head.weight": _head(model),
    }
    for i, layer in enumerate(applied_layers(model)):
        b, p = layer.block, f"transformer.h.{i}."
        H, KV, hd = b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim
        q, k, v = _split_qkv(b.attn, b.attn.qkv.weight)
        qb, kb, vb = _split_qkv(b.attn, _or_zeros(b.attn.qkv.bias, (H + 2 * KV) * hd))

        def per_query_head(t):  # query head h reads kv head h // (H / KV), as SDPA's repeat_interleave
            return t.reshape(KV, hd, *t.shape[1:]).repeat_interleave(H // KV, dim=0).reshape(H * hd, *t.shape[1:])  # noqa: B023 - called in the iteration that defines it

        k, v, kb, vb = (per_query_head(t) for t in (k, v, kb, vb))
        # Conv1D stores weights as [in, out]: the transpose of nn.Linear's
        sd[p + "attn.c_attn.weight"] = torch.cat([q, k, v]).t()
        sd[p + "attn.c_attn.bias"] = torch.cat([qb, kb, vb])
        sd[p + "attn.c_proj.weight"] = b.attn.proj.weight.t()
        sd[p + "attn.c_proj.bias"] = _or_zeros(b.attn.proj.bias, d)
        for n, norm in (("ln_1", b.norm1), ("ln_2", b.norm2)):
            sd[p + f"{n}.weight"], sd[p + f"{n}.bias"] = norm.weight, _or_zeros(norm.bias, d)
        for stlm_name, hf_name in (("fc", "c_fc"), ("proj", "c_proj")):
            w, bias = layer.ffn[stlm_name]
            sd[p + f"mlp.{hf_name}.weight"] = w.t()
            sd[p + f"mlp.{hf_name}.bias"] = _or_zeros(bias, w.shape[0])
    return sd


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Target:
    name: str  # the transformers model_type
    hf_class: str  # what AutoModelForCausalLM builds
    check: Callable[[ModelConfig], None]
    config: Callable  # (cfg, n_layers, eot_id) -> transformers config
    state: Callable  # (stlm model) -> {name: tensor}

    def hf_config(self, cfg: ModelConfig, eot_id: int):

        return self.config(cfg, count_params(cfg).n_layers_applied, eot_id)

    def state_dict(self, model) -> dict[str, torch.Tensor]:
        """transformers' names -> contiguous fp32 copies (a tied or shared weight appears once per use)."""
        with torch.no_grad():
            return {k: v.detach().float().contiguous().clone() for k, v in self.state(model).items()}


LLAMA = Target(
    "llama", "LlamaForCausalLM", _check_llama, lambda c, n, e: _llama_config(c, n, e, qwen3=False), _llama_state
)
QWEN3 = Target(
    "qwen3", "Qwen3ForCausalLM", _check_qwen3, lambda c, n, e: _llama_config(c, n, e, qwen3=True), _llama_state
)
GPT2 = Target("gpt2", "GPT2LMHeadModel", _check_gpt2, _gpt2_config, _gpt2_state)


def choose_target(cfg: ModelConfig) -> Target:
    """The transformers architecture that computes exactly what `cfg` does, or an StlmError naming the key."""
    if cfg.embedder != "token":
        raise _refuse(
            "model.embedder", cfg.embedder, NO_EQUIVALENT.get(("model.embedder", cfg.embedder), "not a token model")
        )
    if cfg.positional == "rope":
        target = QWEN3 if cfg.qk_norm else LLAMA
    elif cfg.positional == "learned":
        target = GPT2
    else:
        raise _refuse("model.positional", cfg.positional, NO_EQUIVALENT[("model.positional", cfg.positional)])
    target.check(cfg)
    return target
