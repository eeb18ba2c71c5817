"""The model zoo: every option builds and trains, sharing really shares, generation with a KV cache
matches the full forward, log-probs are batch-invariant, byte-pooled losses mask padding, and
torch.compile captures the whole model."""

from __future__ import annotations

import math

import pytest
import torch

from stlm.config import CHOICES, ByteLevelConfig, Config, DropoutConfig, ModelConfig, SharingConfig, validate
from stlm.errors import StlmError
from stlm.models import build_model, count_params
from stlm.models.byte_level import EOT, N_SYMBOLS, PAD, ByteDecoderHead
from stlm.models.embedders import EMBEDDERS
from stlm.models.heads import HEADS
from stlm.models.layers.dropout import SCHEDULES, ScaledDropout, dropout_scale
from stlm.models.layers.ffn import FFNS
from stlm.models.layers.norms import NORMS
from stlm.models.layers.positional import POSITIONALS
from stlm.models.sharing import SHARING

V = 300  # vocab of the fake BPE tokenizer
EOT_ID = V - 1


class FakeTokenizer:
    """What byte_pooled needs of a tokenizer: vocab_size, eot_id, token_bytes(id) (b"" for EOT)."""

    vocab_size = V
    eot_id = EOT_ID

    def token_bytes(self, i: int) -> bytes:
        if i == EOT_ID:
            return b""
        if i < 256:
            return bytes([i])
        return bytes([97 + i % 26]) * (1 + i % 20)  # 1 .. 20 bytes: some longer than chunk_len


def tiny(**kw) -> ModelConfig:
    base = dict(
        vocab_size=V, d_model=32, n_heads=4, n_layers=2, context_length=16, multiple_of=16,
        byte_level=ByteLevelConfig(byte_dim=16, chunk_len=6, encoder_layers=1, decoder_layers=1, n_heads=2),
    )  # fmt: skip
    base.update(kw)
    cfg = ModelConfig(**base)
    validate(Config(model=cfg))
    return cfg


def out_vocab(cfg: ModelConfig) -> int:
    return N_SYMBOLS if cfg.embedder == "byte_pooled" else cfg.effective_vocab_size


# ----------------------------------------------------------------------------- registries


def test_registries_match_config_choices():
    assert tuple(EMBEDDERS) == CHOICES["model.embedder"]
    assert tuple(HEADS) == CHOICES["model.embedder"]
    assert tuple(POSITIONALS) == CHOICES["model.positional"]
    assert tuple(FFNS) == CHOICES["model.ffn"]
    assert tuple(NORMS) == CHOICES["model.norm"]
    assert tuple(SHARING) == CHOICES["model.sharing.mode"]
    assert SCHEDULES == CHOICES["model.dropout.schedule"]


# ----------------------------------------------------------------------------- every option

OPTIONS = [
    ("tokenizer", "bpe"), ("tokenizer", "gpt2"), ("tokenizer", "bytes"),
    ("embedder", "token"), ("embedder", "byte_pooled"),
    *[("positional", p) for p in CHOICES["model.positional"]],
    *[("ffn", f) for f in CHOICES["model.ffn"]],
    *[("norm", n) for n in CHOICES["model.norm"]],
    *[("sharing", SharingConfig(mode=m)) for m in CHOICES["model.sharing.mode"]],
    ("n_kv_heads", 1), ("n_kv_heads", 2), ("qk_norm", True), ("bias", True), ("tie_embeddings", False),
]  # fmt: skip


TRAIN_STEPS = 8


@pytest.mark.parametrize("key,value", OPTIONS, ids=lambda v: str(getattr(v, "mode", v)))
def test_every_option_builds_trains_and_starts_near_uniform(key, value):
    kw = {key: value}
    if key == "tokenizer":
        kw["vocab_size"] = None
    cfg = tiny(**kw)
    torch.manual_seed(0)
    model = build_model(cfg, FakeTokenizer() if cfg.embedder == "byte_pooled" else None)
    n_in = cfg.effective_vocab_size
    idx = torch.randint(0, n_in, (2, 16))
    targets = torch.randint(0, n_in, (2, 16))
    logits, loss = model(idx, targets)
    assert logits.shape[:2] == (2, 16) and logits.shape[-1] == out_vocab(cfg)
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(out_vocab(cfg))) < 0.3, "init should predict ~uniformly"
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.num_params() == count_params(cfg).total
    # trains: a few AdamW steps on this one batch bring its loss well down
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [loss.item()]
    for _ in range(TRAIN_STEPS):
        opt.step()
        opt.zero_grad()
        loss = model(idx, targets)[1]
        loss.backward()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses  # norm=none learns slowest: 0.8 here, the others 1.7-3.6


def test_ignored_targets_do_not_count():
    cfg = tiny()
    model = build_model(cfg).eval()
    idx = torch.randint(0, V, (1, 16))
    tgt = torch.randint(0, V, (1, 16))
    tgt_masked = tgt.clone()
    tgt_masked[:, 8:] = -1
    _, loss_masked = model(idx, tgt_masked)
    lp = model.token_logprobs(idx, tgt)
    assert torch.allclose(loss_masked, -lp[:, :8].mean(), atol=1e-5)
    assert (model.token_logprobs(idx, tgt_masked)[:, 8:] == 0).all()


def test_gpt2_residual_init():
    cfg = tiny(d_model=256, n_heads=4, n_layers=8, multiple_of=64)
    model = build_model(cfg)
    blk = model.core.blocks[0]
    assert blk.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    want = 0.02 / math.sqrt(2 * 8)
    assert blk.attn.proj.weight.std().item() == pytest.approx(want, rel=0.05)
    assert blk.ffn.w2.weight.std().item() == pytest.approx(want, rel=0.05)
    assert model.head.lm_head.weight is model.embedder.wte.weight  # tied


# ----------------------------------------------------------------------------- sharing


def _ffn_ids(model):
    return [id(b.ffn) for b in model.core.blocks]


def test_ffn_all_shares_one_module_and_has_fewer_params():
    plain, shared = build_model(tiny(n_layers=4)), build_model(tiny(n_layers=4, sharing=SharingConfig(mode="ffn_all")))
    assert len(set(_ffn_ids(shared))) == 1 and len(set(_ffn_ids(plain))) == 4
    ffn = plain.core.blocks[0].ffn
    one_ffn = sum(p.numel() for p in ffn.parameters())
    assert plain.num_params() - shared.num_params() == 3 * one_ffn


def test_ffn_group_shares_within_consecutive_groups():
    m = build_model(tiny(n_layers=5, sharing=SharingConfig(mode="ffn_group", group_size=2)))
    f = [b.ffn for b in m.core.blocks]
    assert f[0] is f[1] and f[2] is f[3] and f[4] is not f[3] and f[1] is not f[2]


def test_ffn_lora_shares_the_ffn_with_per_layer_adapters():
    cfg = tiny(n_layers=3, sharing=SharingConfig(mode="ffn_lora", lora_rank=2))
    m = build_model(cfg)
    shared = [b.ffn.shared for b in m.core.blocks]
    assert shared[0] is shared[1] is shared[2]
    loras = [b.ffn.lora for b in m.core.blocks]
    assert len({id(x) for x in loras}) == 3
    assert loras[0].A["w1"].shape == (2, 32) and loras[0].B["w1"].shape == (cfg.effective_ffn_dim, 2)
    assert loras[0].A["w2"].shape == (2, cfg.effective_ffn_dim) and loras[0].B["w2"].shape == (32, 2)
    # B starts at zero: every layer computes the shared FFN exactly at init
    x = torch.randn(2, 5, 32)
    assert torch.allclose(m.core.blocks[1].ffn(x), shared[0](x))


def test_block_all_is_one_block_applied_n_layers_times():
    cfg = tiny(n_layers=4, sharing=SharingConfig(mode="block_all"))
    m = build_model(cfg)
    assert len(m.core.blocks) == 1 and m.core.schedule == [0, 0, 0, 0]
    one = build_model(tiny(n_layers=1))
    assert m.num_params() == one.num_params()


def test_block_repeat_runs_each_block_twice_in_a_row_and_flops_count_each_use():
    cfg = tiny(n_layers=3, sharing=SharingConfig(mode="block_repeat", repeats=2))
    m = build_model(cfg)
    assert len(m.core.blocks) == 3 and m.core.schedule == [0, 0, 1, 1, 2, 2]
    calls = []
    for i, b in enumerate(m.core.blocks):
        b.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    m(torch.randint(0, V, (1, 8)))
    assert calls == [0, 0, 1, 1, 2, 2]
    assert m.num_params() == count_params(tiny(n_layers=3)).total
    assert count_params(cfg).flops_per_token == count_params(tiny(n_layers=6)).flops_per_token


# ----------------------------------------------------------------------------- dropout


def test_dropout_schedules():
    def f(s, t, **kw):
        return dropout_scale(DropoutConfig(schedule=s, **kw), t, 100)

    assert [f("constant", t) for t in (0, 50, 100)] == [1.0, 1.0, 1.0]
    assert [f("linear", t, start=1.0, end=0.0) for t in (0, 25, 100)] == [1.0, 0.75, 0.0]
    assert [f("linear", t, start=0.0, end=1.0) for t in (0, 50, 100)] == [0.0, 0.5, 1.0]
    assert [f("triangle", t, start=0.2) for t in (0, 25, 50, 75, 100)] == pytest.approx([0.2, 0.6, 1.0, 0.6, 0.2])
    assert [f("early", t, switch=0.3) for t in (0, 29, 30, 100)] == [1.0, 1.0, 0.0, 0.0]
    assert [f("late", t, switch=0.3) for t in (0, 29, 30, 100)] == [0.0, 0.0, 1.0, 1.0]


def test_set_dropout_scale_scales_every_dropout():
    cfg = tiny(dropout=DropoutConfig(embedding=0.1, attention=0.2, residual=0.3))
    m = build_model(cfg)
    drops = [d for d in m.modules() if isinstance(d, ScaledDropout)]
    assert {d.base_p for d in drops} == {0.1, 0.2, 0.3}
    m.set_dropout_scale(0.5)
    assert {d.p for d in drops} == {0.05, 0.1, 0.15}
    m.set_dropout_scale(0.0)  # training mode but no dropout: deterministic
    m.train()
    idx = torch.randint(0, V, (2, 16))
    assert torch.equal(m(idx)[0], m(idx)[0])
    m.set_dropout_scale(1.0)
    assert not torch.equal(m(idx)[0], m(idx)[0])


# ----------------------------------------------------------------------------- generation, batch invariance

CACHE_CASES = {
    "rope-gqa": dict(n_kv_heads=2),
    "alibi-mqa": dict(positional="alibi", n_kv_heads=1),
    "learned-qknorm": dict(positional="learned", qk_norm=True, norm="layernorm", bias=True),
    "sincos": dict(positional="sincos", ffn="gelu"),
    "nope": dict(positional="none", ffn="relu2"),
    "block_repeat": dict(sharing=SharingConfig(mode="block_repeat", repeats=2)),
    "block_all": dict(sharing=SharingConfig(mode="block_all"), n_layers=3),
    "ffn_lora": dict(sharing=SharingConfig(mode="ffn_lora")),
}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_kv_cache_logits_equal_full_forward(case):
    cfg = tiny(**CACHE_CASES[case])
    torch.manual_seed(1)
    m = build_model(cfg).eval()
    for lora in (d for d in m.modules() if hasattr(d, "B") and isinstance(d.B, torch.nn.ParameterDict)):
        for b in lora.B.values():  # non-zero adapters so they matter
            torch.nn.init.normal_(b, 0, 0.02)
    idx = torch.randint(0, V, (2, 12))
    full, _ = m(idx)
    cache = m.new_kv_cache(2, 12)
    assert cache.k.shape[0] == len(m.core.schedule)  # one slot per applied layer
    with torch.no_grad():
        parts = [m.forward_cached(idx[:, :5], cache, 0)]  # prefill
        parts += [m.forward_cached(idx[:, t : t + 1], cache, t) for t in range(5, 9)]  # one at a time
        parts += [m.forward_cached(idx[:, 9:], cache, 9)]  # a chunk with a cache offset
    inc = torch.cat(parts, dim=1)
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(positional="alibi", n_kv_heads=2), dict(embedder="byte_pooled")],
    ids=["rope", "alibi-gqa", "byte_pooled"],
)
def test_token_logprobs_batch_invariant_under_right_padding(kw):
    cfg = tiny(**kw)
    m = build_model(cfg, FakeTokenizer()).eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, V, (1, 7), generator=g)
    b = torch.randint(0, V, (1, 16), generator=g)
    ta, tb = torch.randint(0, V, (1, 7), generator=g), torch.randint(0, V, (1, 16), generator=g)
    with torch.no_grad():
        alone = m.token_logprobs(a, ta)
        pad = torch.zeros(1, 9, dtype=torch.long)
        batch_idx = torch.cat([torch.cat([a, pad], 1), b])
        batch_tgt = torch.cat([torch.cat([ta, pad - 1], 1), tb])
        batched = m.token_logprobs(batch_idx, batch_tgt)
    assert torch.allclose(batched[0, :7], alone[0], atol=1e-5)
    assert (batched[0, 7:] == 0).all()
    assert torch.allclose(batched[1], m.token_logprobs(b, tb)[0], atol=1e-5)


def test_kv_cache_is_for_token_models_and_bounded_by_context():
    with pytest.raises(StlmError, match="context_length"):
        build_model(tiny())(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(StlmError, match="context_length"):
        build_model(tiny()).new_kv_cache(1, 17)
    with pytest.raises(StlmError, match="embedder=token"):
        build_model(tiny(embedder="byte_pooled"), FakeTokenizer()).new_kv_cache(1, 4)


# ----------------------------------------------------------------------------- byte-pooled


def test_byte_table_eot_is_one_symbol_even_when_chunk_is_shorter_than_the_marker():
    cl = 4  # < len("<|endoftext|>") == 13
    cfg = tiny(
        embedder="byte_pooled",
        byte_level=ByteLevelConfig(byte_dim=16, chunk_len=cl, encoder_layers=1, decoder_layers=1, n_heads=2),
    )
    m = build_model(cfg, FakeTokenizer())
    table = m.embedder.token_bytes.table
    assert table.shape == (V, cl)  # chunk length comes from the config
    assert table[EOT_ID].tolist() == [EOT, PAD, PAD, PAD]
    assert table[ord("h")].tolist() == [ord("h"), PAD, PAD, PAD]
    assert table[256 + 19].tolist() == [97 + (256 + 19) % 26] * cl  # 20-byte token cut at chunk_len
    # predicting EOT costs exactly its one symbol plus the end-of-token event after it
    idx = torch.randint(0, V, (1, 6))
    tgt = torch.full((1, 6), EOT_ID)
    logits, _ = m(idx, tgt)
    lp = m.token_logprobs(idx, tgt)
    logp = torch.log_softmax(logits[0].float(), -1)
    want = logp[:, 0, EOT] + logp[:, 1, PAD]
    assert torch.allclose(lp[0], want, atol=1e-5)
    # chunk_len flows into the logits shape: one prediction per byte slot
    assert logits.shape == (1, 6, cl, N_SYMBOLS)


def test_byte_pooled_loss_ignores_pad_positions():
    cfg = tiny(embedder="byte_pooled")
    m = build_model(cfg, FakeTokenizer()).eval()
    idx = torch.randint(0, V, (2, 10))
    tgt = torch.tensor([[ord("a"), 256 + 2, EOT_ID, 256 + 30, 5, 6, 7, 8, 9, 10]] * 2)
    logits, loss = m(idx, tgt)
    tb = m.embedder.token_bytes(tgt)
    assert (tb == PAD).any() and (tb != PAD).any()
    scored = ByteDecoderHead.scored(tb)
    # exactly one PAD per short token is scored: the end-of-token event right after its bytes
    n_real = (tb != PAD).sum(-1)
    assert ((scored & (tb == PAD)).sum(-1) == (n_real < tb.shape[-1]).long()).all()
    noisy = logits.clone()
    filler = (tb == PAD) & ~scored
    assert filler.any()
    noisy[filler] = torch.randn_like(noisy[filler]) * 100  # scramble only filler pad positions
    assert torch.allclose(ByteDecoderHead.loss_from_logits(noisy, tb), loss)
    # scrambling the end-of-token position does change the loss
    ends = (tb == PAD) & scored
    noisy[ends] = torch.randn_like(noisy[ends]) * 100
    assert not torch.allclose(ByteDecoderHead.loss_from_logits(noisy, tb), loss)
    # the loss is the mean of -log p over scored positions; a token's log-prob is their sum
    lp = m.token_logprobs(idx, tgt)
    assert torch.allclose(-lp.sum() / scored.sum(), loss, atol=1e-5)


def test_byte_pooled_needs_the_token_bytes_and_keeps_them_in_the_state_dict():
    cfg = tiny(embedder="byte_pooled")
    bare = build_model(cfg)
    idx = torch.randint(0, V, (1, 4))
    with pytest.raises(StlmError, match="token_bytes|tokenizer"):
        bare(idx, idx)
    full = build_model(cfg, FakeTokenizer())
    bare.load_state_dict(full.state_dict())
    assert torch.equal(bare.embedder.token_bytes.table, full.embedder.token_bytes.table)
    assert torch.allclose(bare(idx, idx)[1], full(idx, idx)[1])
    assert "embedder.token_bytes.table" in full.state_dict()
    assert full.num_params() == count_params(cfg).total  # the table is a buffer, not a parameter


def test_byte_pooled_tying_and_vocab_check():
    tied = build_model(tiny(embedder="byte_pooled"), FakeTokenizer())
    assert tied.head.out.weight is tied.embedder.byte_emb.weight
    untied = build_model(tiny(embedder="byte_pooled", tie_embeddings=False), FakeTokenizer())
    assert untied.head.out.weight is not untied.embedder.byte_emb.weight
    with pytest.raises(StlmError, match="tokens"):
        build_model(tiny(embedder="byte_pooled", vocab_size=400), FakeTokenizer())


# ----------------------------------------------------------------------------- speed-related structure


def test_rope_tables_are_precomputed_non_persistent_buffers():
    m = build_model(tiny(context_length=16))
    pos = m.core.pos
    assert pos.cos.shape == pos.sin.shape == (16, 32 // 4)  # [context, head_dim], full width
    assert "core.pos.cos" not in m.state_dict()


def test_rope_rotates_each_pair_by_its_position_angle_and_scores_depend_on_distance_only():
    cfg = tiny(context_length=16)
    pos = build_model(cfg).core.pos
    hd, half = cfg.head_dim, cfg.head_dim // 2
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, hd)
    rq, rk = pos.rotate(x, x.flip(-1))
    # the textbook rotate-half RoPE: pair (x[i], x[i + hd/2]) at position p turns by p * theta^(-2i/hd)
    ang = torch.arange(16.0)[:, None] * cfg.rope_theta ** (-2 * torch.arange(half) / hd)
    x1, x2 = x[..., :half], x[..., half:]
    want = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], dim=-1)
    assert torch.allclose(rq, want, atol=1e-5)
    # q at position m against k at position n scores the same as at (m + s, n + s)
    q, k = torch.randn(hd), torch.randn(hd)
    seq_q, seq_k = q.expand(1, 1, 16, hd), k.expand(1, 1, 16, hd)
    rq, rk = pos.rotate(seq_q, seq_k)
    scores = rq[0, 0] @ rk[0, 0].T  # [m, n]
    assert torch.allclose(scores[5, 2], scores[12, 9], atol=1e-4)
    assert torch.allclose(scores[2, 5], scores[10, 13], atol=1e-4)
    # a cache offset continues the same positions
    tail_q, _ = pos.rotate(seq_q[:, :, :4], seq_k[:, :, :4], start=12)
    assert torch.allclose(tail_q, rq[:, :, 12:], atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=2, n_layers=1, sharing=SharingConfig(mode="ffn_lora")),
        dict(embedder="byte_pooled", positional="alibi", n_layers=1),
    ],
    ids=["token", "byte_pooled"],
)
def test_torch_compile_captures_one_graph_matching_eager(kw):
    """fullgraph=True: dynamo captures the whole forward (no graph breaks); aot_eager also traces the
    backward. The inductor code generator is exercised in test_torch_compile_inductor (slow)."""
    torch._dynamo.reset()
    cfg = tiny(**kw)
    torch.manual_seed(0)
    m = build_model(cfg, FakeTokenizer())
    idx, tgt = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    logits_c, loss_c = compiled(idx, tgt)
    loss_c.backward()
    g_c = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    logits_e, loss_e = m(idx, tgt)
    loss_e.backward()
    assert torch.allclose(logits_c, logits_e, atol=1e-5) and torch.allclose(loss_c, loss_e, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g_c, m.parameters()))


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    m = build_model(tiny(n_layers=1)).eval()
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        eager = m(idx, idx)[1]
        compiled = torch.compile(m)(idx, idx)[1]
    assert torch.allclose(eager, compiled, atol=1e-4)
