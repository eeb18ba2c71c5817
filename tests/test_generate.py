"""stlm.eval.generate: the KV-cached sampler agrees with plain recomputation, and sampling is seeded."""

from __future__ import annotations

import pytest
import torch

from stlm.config import DataConfig, ModelConfig
from stlm.errors import StlmError
from stlm.eval.generate import generate, generate_ids, sample_next


def tiny(context_length: int = 32, **kw):
    models = pytest.importorskip("stlm.models")
    if not hasattr(models, "build_model"):
        pytest.skip("stlm.models.build_model is not available yet")
    from stlm.tokenizers import load_tokenizer

    cfg = ModelConfig(tokenizer="bytes", context_length=context_length, n_layers=2, d_model=32, n_heads=2, **kw)
    tok = load_tokenizer(cfg, DataConfig())
    torch.manual_seed(0)
    return models.build_model(cfg, tok).eval(), tok


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_kv_cache_greedy_equals_recomputation(positional):
    model, tok = tiny(context_length=32, positional=positional)
    prompt = tok.encode("Once upon a time")
    # 40 new tokens after a 16-token prompt runs past the 32-token context: the window slides
    cached = generate_ids(model, prompt, max_new_tokens=40, temperature=0.0)
    plain = generate_ids(model, prompt, max_new_tokens=40, temperature=0.0, use_cache=False)
    assert len(cached) == 40 and cached == plain
    # the cached logits themselves match a full forward at every step before the window slides
    seq = prompt + cached[:10]
    cache = model.new_kv_cache(1, 32, torch.device("cpu"), torch.float32)
    step = model.forward_cached(torch.tensor([seq[:16]]), cache, 0)
    full = model(torch.tensor([seq]))[0]
    assert torch.allclose(step[0], full[0, :16], atol=1e-5)
    for pos in range(16, len(seq)):
        one = model.forward_cached(torch.tensor([[seq[pos]]]), cache, pos)
        assert torch.allclose(one[0, 0], full[0, pos], atol=1e-5)


def test_top_k_one_is_greedy():
    model, tok = tiny()
    prompt = tok.encode("The cat")
    greedy = generate_ids(model, prompt, 20, temperature=0.0)
    assert generate_ids(model, prompt, 20, temperature=1.3, top_k=1, seed=7) == greedy
    assert generate_ids(model, prompt, 20, temperature=1.0, top_p=1e-9, seed=3) == greedy  # nucleus of one token


def test_seeded_sampling_is_reproducible():
    model, tok = tiny()
    a = generate(model, tok, "Hello", max_new_tokens=30, temperature=1.0, seed=123)
    b = generate(model, tok, "Hello", max_new_tokens=30, temperature=1.0, seed=123)
    c = generate(model, tok, "Hello", max_new_tokens=30, temperature=1.0, seed=124)
    assert a == b and a != c


def test_sample_next_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    draws = {sample_next(logits, 1.0, 2, None, g) for _ in range(200)}
    assert draws == {1, 2}  # top-k=2 keeps exactly the two best
    # top-p: probs ~ [0.004, 0.52, 0.47, 0.002]; p=0.5 keeps only the first token of the sorted list
    assert {sample_next(logits, 1.0, None, 0.5, g) for _ in range(50)} == {1}
    assert sample_next(logits, 0.0, None, None, g) == 1


def test_byte_pooled_models_are_refused():
    models = pytest.importorskip("stlm.models")
    if not hasattr(models, "build_model"):
        pytest.skip("stlm.models.build_model is not available yet")

    class Fake(torch.nn.Module):
        config = ModelConfig(tokenizer="gpt2", embedder="byte_pooled")

    with pytest.raises(StlmError, match="byte-pooled"):
        generate_ids(Fake(), [1, 2, 3], 5)


def test_stlm_generate_cli(tmp_path, capsys):
    ck = pytest.importorskip("stlm.train.checkpoint")
    from stlm.cli import main
    from stlm.config import build_config

    model, tok = tiny()
    cfg = build_config(
        {"model": {"tokenizer": "bytes", "context_length": 32, "n_layers": 2, "d_model": 32, "n_heads": 2}}
    )
    path = ck.save_checkpoint(
        tmp_path / "run" / "step_000001",
        model_state=model.state_dict(),
        trainer_state={},
        cfg=cfg,
        meta={"step": 1, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    rc = main(
        ["generate", str(path), "--prompt", "Once", "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("Once")
    assert out.rstrip("\n") == "Once" + generate(model, tok, "Once", 8, temperature=0.0)
