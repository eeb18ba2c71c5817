"""Parameter accounting is exact (against the built model, over hundreds of random configs),
FLOPs per token match torch's FLOP counter, and budgets are solved (or refused helpfully)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stlm.config import CHOICES, ByteLevelConfig, Config, ModelConfig, SharingConfig, load_config, validate
from stlm.errors import StlmError
from stlm.models import build_model, count_params, solve_budget
from stlm.models import params as params_cli

REPO = Path(__file__).resolve().parents[1]


class FakeTokenizer:
    def __init__(self, vocab_size: int):
        self.vocab_size, self.eot_id = vocab_size, vocab_size - 1

    def token_bytes(self, i: int) -> bytes:
        return b"" if i == self.eot_id else bytes([i % 256]) * (1 + i % 7)


def random_config(rng: random.Random) -> ModelConfig:
    """A tiny but arbitrary valid config: every choice, sharing mode, and the odd shapes."""
    positional = rng.choice(CHOICES["model.positional"])
    n_heads = rng.choice([1, 2, 3, 4])
    head_dim = rng.choice([2, 4, 6] if positional == "rope" else [1, 2, 3, 4, 5])
    tokenizer = rng.choices(["bpe", "bytes", "gpt2"], weights=[10, 3, 1])[0]
    embedder = "token" if tokenizer == "bytes" else rng.choices(["token", "byte_pooled"], weights=[2, 1])[0]
    bl_heads = rng.choice([1, 2])
    return ModelConfig(
        tokenizer=tokenizer,
        vocab_size=rng.randint(260, 400) if tokenizer == "bpe" else None,
        embedder=embedder,
        context_length=rng.randint(2, 12),
        n_layers=rng.randint(1, 5),
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        n_kv_heads=rng.choice([None] + [k for k in range(1, n_heads + 1) if n_heads % k == 0]),
        qk_norm=rng.random() < 0.3,
        positional=positional,
        ffn=rng.choice(CHOICES["model.ffn"]),
        ffn_dim=rng.choice([None, rng.randint(1, 40)]),
        ffn_multiple=rng.choice([1.0, 2.5, 4.0]),
        multiple_of=rng.choice([1, 4, 8]),
        norm=rng.choice(CHOICES["model.norm"]),
        bias=rng.random() < 0.3,
        tie_embeddings=rng.random() < 0.6,
        sharing=SharingConfig(
            mode=rng.choice(CHOICES["model.sharing.mode"]),
            group_size=rng.randint(1, 3),
            lora_rank=rng.randint(1, 3),
            repeats=rng.randint(1, 3),
        ),
        byte_level=ByteLevelConfig(
            byte_dim=bl_heads * rng.randint(1, 4),
            chunk_len=rng.randint(2, 5),
            encoder_layers=rng.randint(0, 2),
            decoder_layers=rng.randint(0, 2),
            n_heads=bl_heads,
        ),
    )


def _build(cfg: ModelConfig, with_bytes: bool = True):
    tok = FakeTokenizer(cfg.effective_vocab_size) if cfg.embedder == "byte_pooled" and with_bytes else None
    return build_model(cfg, tok)


def test_count_is_exact_over_random_configs():
    rng = random.Random(1234)
    seen = set()
    for _ in range(400):
        cfg = random_config(rng)
        validate(Config(model=cfg))  # only valid configs
        model = _build(cfg, with_bytes=False)  # the token -> bytes table is a buffer: not needed to count
        pc = count_params(cfg)
        unique = sum(p.numel() for p in model.parameters())
        assert pc.total == unique, cfg
        assert sum(pc.breakdown.values()) == pc.total
        assert pc.n_layers_applied == len(model.core.schedule)
        seen.update({cfg.positional, cfg.ffn, cfg.norm, cfg.sharing.mode, cfg.embedder, cfg.tokenizer})
    every = {v for k in ("model.positional", "model.ffn", "model.norm", "model.sharing.mode",
                         "model.embedder", "model.tokenizer") for v in CHOICES[k]}  # fmt: skip
    assert every <= seen


def test_flops_per_token_match_torch_flop_counter():
    """Under the math SDPA kernel torch counts the full T x T attention, as the PaLM formula does."""
    rng = random.Random(7)
    for _ in range(12):  # the FLOP counter is slow (~0.3 s a pass); the exact count test covers breadth
        cfg = random_config(rng)
        model = _build(cfg)
        T = cfg.context_length
        idx = torch.randint(0, cfg.effective_vocab_size, (2, T))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            _, loss = model(idx, idx)
            loss.backward()
        assert fc.get_total_flops() == count_params(cfg).flops_per_token * 2 * T, cfg


def test_breakdown_of_the_50m_baseline():
    cfg = load_config(REPO / "configs" / "baseline-50m.yaml").model
    pc = count_params(cfg)
    d, L, V, hd = 512, 8, 50257, 32
    assert pc.breakdown["embedding"] == V * d and pc.breakdown["head"] == 0  # tied
    assert pc.breakdown["attention"] == L * (d * (16 + 2 * 4) * hd + d * d)  # GQA: 4 kv heads
    assert pc.breakdown["ffn"] == L * 3 * d * 1536
    assert pc.breakdown["norms"] == (2 * L + 1) * d
    assert pc.total == 49_857_536
    # 6 N_applied + 12 L d T, N_applied including the tied d x V output matmul
    n_applied = pc.breakdown["attention"] + pc.breakdown["ffn"] + V * d
    assert pc.flops_per_token == 6 * n_applied + 12 * L * d * 512


# ----------------------------------------------------------------------------- solve_budget

BASELINES = {"baseline-10m.yaml": 10_000_000, "baseline-50m.yaml": 50_000_000, "baseline-100m.yaml": 100_000_000}


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("free", ["d_model", "ffn_dim", "n_layers"])
def test_solve_budget_hits_the_baseline_budgets(name, free):
    cfg = load_config(REPO / "configs" / name).model
    target = BASELINES[name]
    start = dataclasses.replace(cfg, **{free: {"d_model": 64, "ffn_dim": 64, "n_layers": 1}[free]})
    solved = solve_budget(start, target, free=free)
    assert abs(count_params(solved).total - target) <= 0.01 * target
    assert start.__dict__[free] != solved.__dict__[free]  # a copy was returned, the input is untouched
    assert solved.d_model % solved.n_heads == 0 and solved.d_model % solved.multiple_of == 0
    assert solved.head_dim % 2 == 0  # rope
    assert solved.effective_ffn_dim % solved.multiple_of == 0
    validate(Config(model=solved))


def test_solve_d_model_scales_ffn_unless_it_is_explicit():
    cfg = ModelConfig(tokenizer="gpt2", n_layers=8, n_heads=8, context_length=512, multiple_of=16)
    solved = solve_budget(cfg, 30_000_000, free="d_model", tolerance=0.05)
    assert solved.ffn_dim is None and solved.effective_ffn_dim > cfg.effective_ffn_dim
    fixed = solve_budget(dataclasses.replace(cfg, ffn_dim=512), 30_000_000, free="d_model", tolerance=0.05)
    assert fixed.ffn_dim == 512


def test_solve_budget_matches_an_arm_to_the_control_not_just_the_target():
    # the quickstart's arms: learned positions cost 128 x 128 = 16,384 more than rope
    base = load_config(REPO / "configs" / "quickstart.yaml").model
    rope = solve_budget(dataclasses.replace(base, multiple_of=16), 1_000_000, free="ffn_dim", tolerance=0.02)
    learned = dataclasses.replace(base, positional="learned", multiple_of=16)
    n_rope = count_params(rope).total
    alone = count_params(solve_budget(learned, 1_000_000, free="ffn_dim", tolerance=0.02)).total
    matched = count_params(solve_budget(learned, 1_000_000, free="ffn_dim", tolerance=0.02, nearest=n_rope)).total
    assert (n_rope, alone, matched) == (992_384, 1_008_768, 984_192)  # the numbers: +1.65% vs -0.83%
    assert abs(matched - n_rope) < abs(alone - n_rope)
    # `nearest` never leaves the tolerance around the target
    far = solve_budget(learned, 1_000_000, free="ffn_dim", tolerance=0.02, nearest=2_000_000)
    assert abs(count_params(far).total - 1_000_000) <= 0.02 * 1_000_000


def test_infeasible_budget_names_the_nearest_feasible_sizes():
    cfg = load_config(REPO / "configs" / "baseline-50m.yaml").model
    with pytest.raises(StlmError) as e:
        solve_budget(cfg, 50_000_000, free="n_layers", tolerance=0.001)
    msg = str(e.value)
    assert "nearest feasible" in msg and "n_layers=8 -> 49.86M" in msg and "n_layers=9 -> 52.87M" in msg
    with pytest.raises(StlmError, match="smallest"):
        solve_budget(cfg, 1_000_000, free="n_layers")  # the GPT-2 embedding alone is 25.7M
    with pytest.raises(StlmError, match="block_all|stops growing|nearest"):
        solve_budget(dataclasses.replace(cfg, sharing=SharingConfig(mode="block_all")), 80_000_000, free="n_layers")


# ----------------------------------------------------------------------------- stlm count


def test_count_cli_json_total_equals_count_params(capsys):
    path = str(REPO / "configs" / "baseline-50m.yaml")
    assert params_cli.main([path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pc = count_params(load_config(path).model)
    assert out["total"] == pc.total and out["breakdown"] == pc.breakdown
    assert out["flops_per_token"] == pc.flops_per_token

    assert params_cli.main([path, "model.ffn_dim=null", "--budget", "30M", "--free", "n_layers",
                            "--tolerance", "0.05", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert abs(out["total"] - 30_000_000) <= 0.05 * 30_000_000
    assert out["solved"]["n_layers"] == out["dims"]["n_layers"]


def test_count_cli_table(capsys):
    assert params_cli.main([str(REPO / "configs" / "baseline-10m.yaml")]) == 0
    out = capsys.readouterr().out
    assert "embedding" in out and "total" in out and "10,024,192" in out and "FLOPs/token" in out
