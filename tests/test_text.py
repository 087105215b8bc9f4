"""Text encoders (tiny and real loaders on tiny saved models) and the prompt cache."""
import json

import pytest
import torch

from gentron.text import PromptCache, build_text_encoder
from gentron.text.encoder import seeded

PROMPTS = ["a red cube", "", "a small blue sphere to the left of a green cone"]


@pytest.fixture(scope="module")
def tiny_clip():
    return build_text_encoder({"kind": "tiny_clip", "seed": 0})


@pytest.fixture(scope="module")
def tiny_t5():
    return build_text_encoder({"kind": "tiny_t5", "seed": 0})


def check_embedding(emb, encoder, n):
    assert emb.tokens.shape[0] == emb.mask.shape[0] == emb.pooled.shape[0] == n
    assert emb.tokens.shape[2] == encoder.width and emb.pooled.shape[1] == encoder.pooled_width
    lengths = emb.mask.sum(1)
    # Trimmed to the longest real prompt; masks are a prefix of True; padding is zero.
    assert emb.tokens.shape[1] == int(lengths.max())
    assert torch.equal(emb.mask, torch.arange(emb.mask.shape[1])[None] < lengths[:, None])
    assert (emb.tokens[~emb.mask] == 0).all()
    assert lengths.min() >= 1


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_t5"])
def test_tiny_encoder_contract(which, request):
    encoder = request.getfixturevalue(which)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    emb = encoder.encode(PROMPTS)
    check_embedding(emb, encoder, len(PROMPTS))
    assert not emb.tokens.requires_grad
    # A prompt's features do not depend on the batch it was encoded in.
    alone = encoder.encode(PROMPTS[:1])
    length = alone.tokens.shape[1]
    torch.testing.assert_close(alone.tokens[0], emb.tokens[0, :length], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.pooled[0], emb.pooled[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        encoder.encode("not a list")


def test_tiny_encoders_are_seed_deterministic(tiny_clip, tiny_t5):
    again = build_text_encoder({"kind": "tiny_clip", "seed": 0})
    other = build_text_encoder({"kind": "tiny_clip", "seed": 1})
    assert again.name == tiny_clip.name != other.name
    torch.testing.assert_close(again.encode(PROMPTS).pooled, tiny_clip.encode(PROMPTS).pooled, rtol=0, atol=0)
    assert not torch.allclose(other.encode(PROMPTS).pooled, tiny_clip.encode(PROMPTS).pooled)
    t5_again = build_text_encoder({"kind": "tiny_t5", "seed": 0})
    assert t5_again.name == tiny_t5.name
    torch.testing.assert_close(t5_again.encode(PROMPTS).tokens, tiny_t5.encode(PROMPTS).tokens, rtol=0, atol=0)


def test_openclip_encoder_matches_open_clip_text_tower():
    """Our short causal pass equals open_clip's own 77-token forward (the path real CLIP weights take):
    tokens after ln_final, pooled = projected EOT feature."""
    from open_clip.transformer import TextTransformer

    from gentron.text.clip import OpenCLIPTextEncoder, clip_bpe_tokenizer

    tower = seeded(0, lambda: TextTransformer(context_length=77, vocab_size=49408, width=64, heads=4, layers=2, output_dim=48))
    tower.output_tokens = True
    encoder = OpenCLIPTextEncoder(tower, clip_bpe_tokenizer(), "open_clip-test")
    ids = encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        pooled, tokens = tower(ids)
    emb = encoder.encode(PROMPTS)
    torch.testing.assert_close(emb.pooled, pooled, atol=1e-5, rtol=1e-5)
    length = emb.tokens.shape[1]
    torch.testing.assert_close(emb.tokens, tokens[:, :length] * emb.mask[..., None], atol=1e-5, rtol=1e-5)
    # Real lengths: SOT + words + EOT; the empty prompt is SOT, EOT.
    assert emb.mask.sum(1).tolist()[1] == 2


def test_tiny_clip_pools_by_mean_and_keeps_words_apart(tiny_clip):
    """The random stand-in's EOT feature is not a trained summary, so it pools by the masked mean of
    its tokens (projected); and its features must tell words apart, in place and across contexts."""
    from gentron.text.encoder import masked_mean

    emb = tiny_clip.encode(PROMPTS)
    torch.testing.assert_close(emb.pooled, tiny_clip._project(masked_mean(emb.tokens, emb.mask)))
    emb = tiny_clip.encode(["a green circle and a purple square", "a red circle and a purple square",
                            "a purple square and a green circle"])
    unit = torch.nn.functional.normalize(emb.tokens, dim=-1)
    cos = lambda a, b: float((unit[a] * unit[b]).sum())  # noqa: E731
    assert cos((0, 2), (1, 2)) < 0.6  # "green" vs "red", same place
    assert cos((0, 3), (1, 3)) > 0.8  # "circle" after "green" vs after "red"
    assert cos((0, 2), (2, 6)) > 0.6  # "green" first vs last: the same word ...
    assert cos((0, 2), (2, 6)) < 0.98  # ... in another place, which binding needs to see


def test_tiny_clip_binds_each_noun_to_its_own_adjective(tiny_clip):
    """Each token sees itself and the token before it (two layers: two back), as a trained encoder's
    noun feature carries its own adjective: "circle" changes with its colour, "square" does not
    change with the other object's."""
    from gentron.text.clip import local_causal_mask

    assert local_causal_mask(4, 2).isinf().tolist() == [[False, True, True, True], [False, False, True, True],
                                                        [True, False, False, True], [True, True, False, False]]
    emb = tiny_clip.encode(["a green circle and a purple square", "a red circle and a purple square"])
    unit = torch.nn.functional.normalize(emb.tokens, dim=-1)
    assert float((unit[0, 3] * unit[1, 3]).sum()) < 0.95  # "circle" after "green" vs after "red"
    torch.testing.assert_close(unit[0, 7], unit[1, 7])  # "square": the first phrase is out of its sight


def test_tiny_t5_pooled_is_masked_mean(tiny_t5):
    emb = tiny_t5.encode(PROMPTS)
    expected = torch.stack([emb.tokens[i, m].mean(0) for i, m in enumerate(emb.mask)])
    torch.testing.assert_close(emb.pooled, expected)
    assert emb.mask.sum(1).tolist() == [len(p.encode()) + 1 for p in PROMPTS]  # bytes + </s>


def test_openclip_loads_local_checkpoint(tmp_path):
    """The `clip` kind a user calls with a real model name, here a tiny registered config and a
    state dict saved to disk."""
    import open_clip

    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
    }
    (tmp_path / "gentron-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "gentron-test-tiny.json")
    model = seeded(3, lambda: open_clip.create_model("gentron-test-tiny")).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")

    encoder = build_text_encoder({"kind": "clip", "model": "gentron-test-tiny", "pretrained": str(tmp_path / "weights.pt")})
    assert (encoder.width, encoder.pooled_width) == (48, 32)
    assert "weights.pt" in encoder.name
    assert not hasattr(encoder, "visual")
    emb = encoder.encode(PROMPTS)
    check_embedding(emb, encoder, len(PROMPTS))
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer("gentron-test-tiny")(PROMPTS))
    torch.testing.assert_close(emb.pooled, expected, atol=1e-5, rtol=1e-5)


def save_tiny_clip_tokenizer(path):
    """A transformers CLIP tokenizer folder built from open_clip's bundled BPE (no download)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    tokenizer = CLIPTokenizer(vocab=bpe.encoder, merges=merges)
    tokenizer.save_pretrained(path)
    return tokenizer


def test_hf_clip_loads_local_folder(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = save_tiny_clip_tokenizer(tmp_path)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=24, max_position_embeddings=77,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = seeded(0, lambda: CLIPTextModelWithProjection(config)).eval()
    model.save_pretrained(tmp_path)

    encoder = build_text_encoder({"kind": "hf_clip", "path": str(tmp_path)})
    assert (encoder.width, encoder.pooled_width) == (32, 24)
    emb = encoder.encode(PROMPTS)
    check_embedding(emb, encoder, len(PROMPTS))
    batch = tokenizer(PROMPTS[2:], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(emb.pooled[2], out.text_embeds[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.tokens[2], out.last_hidden_state[0], atol=1e-5, rtol=1e-5)


def test_t5_loads_local_folder(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = seeded(0, lambda: T5EncoderModel(config)).eval()
    model.save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)

    encoder = build_text_encoder({"kind": "t5", "path": str(tmp_path), "max_length": 16})
    assert encoder.width == encoder.pooled_width == 32
    emb = encoder.encode(PROMPTS)
    check_embedding(emb, encoder, len(PROMPTS))
    assert emb.tokens.shape[1] == 16  # the long prompt is truncated to max_length
    ids = ByT5Tokenizer()(PROMPTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(emb.tokens[0, : len(expected)], expected, atol=1e-5, rtol=1e-5)


def test_spec_validation_and_offline_hub_errors():
    with pytest.raises(ValueError, match="clip.*hf_clip.*t5.*tiny_clip.*tiny_t5"):
        build_text_encoder({"kind": "bert"})
    with pytest.raises(ValueError, match="widht"):
        build_text_encoder({"kind": "tiny_clip", "widht": 3})
    with pytest.raises(ValueError, match="list_models"):
        build_text_encoder({"kind": "clip", "model": "ViT-Nope", "pretrained": "openai"})
    # conftest sets HF_HUB_OFFLINE=1: hub names that are not cached say what is missing and how to get it.
    with pytest.raises(FileNotFoundError, match=r"google/flan-t5-xxl.*huggingface-cli download google/flan-t5-xxl"):
        build_text_encoder({"kind": "t5", "path": "google/flan-t5-xxl"})
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14.*HF_HUB_OFFLINE"):
        build_text_encoder({"kind": "hf_clip", "path": "openai/clip-vit-large-patch14"})


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and records every prompt it is asked to encode."""

    def __init__(self, encoder):
        super().__init__()
        self.inner = encoder
        self.name, self.width, self.pooled_width = encoder.name, encoder.width, encoder.pooled_width
        self.seen = []

    def encode(self, prompts):
        self.seen.extend(prompts)
        return self.inner.encode(prompts)


def test_prompt_cache_memoises_and_matches_direct_encoding(tiny_clip, tiny_t5, tmp_path):
    encoders = [CountingEncoder(tiny_clip), CountingEncoder(tiny_t5)]
    cache = PromptCache(encoders, tmp_path, batch_size=2)
    batch = PROMPTS + [PROMPTS[0]]
    out = cache.encode(batch)
    assert len(out) == 2
    for emb, enc in zip(out, encoders):
        assert sorted(enc.seen) == sorted(PROMPTS)  # each unique prompt encoded once
        direct = enc.inner.encode(batch)
        torch.testing.assert_close(emb.tokens, direct.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(emb.pooled, direct.pooled, atol=1e-5, rtol=1e-5)
        assert torch.equal(emb.mask, direct.mask)
    # A sub-batch is padded to its own longest prompt only.
    short = cache.encode(["", PROMPTS[0]])
    assert short[0].tokens.shape[1] == 5 and short[1].tokens.shape[1] == len(PROMPTS[0]) + 1
    assert all(len(enc.seen) == len(PROMPTS) for enc in encoders)


def test_prompt_cache_persists_and_shares_a_folder(tiny_clip, tmp_path):
    first, second = PromptCache([tiny_clip], tmp_path), PromptCache([tiny_clip], tmp_path)
    first.encode(["a red cube"])
    second.encode(["a blue cone"])  # another process writing to the same folder
    files = sorted(p.name for p in (tmp_path / first.dirs[0].name).iterdir())
    assert files[0] == "encoder.json" and len(files) == 3 and all(f.endswith(".pt") for f in files[1:])
    # A fresh cache answers both prompts from disk without running the encoder.
    reader_encoder = CountingEncoder(tiny_clip)
    reader = PromptCache([reader_encoder], tmp_path)
    emb = reader.encode(["a blue cone", "a red cube"])[0]
    assert reader_encoder.seen == []
    torch.testing.assert_close(emb.pooled, tiny_clip.encode(["a blue cone", "a red cube"]).pooled, atol=1e-5, rtol=1e-5)
    # Another encoder fingerprint gets its own folder.
    other = build_text_encoder({"kind": "tiny_clip", "seed": 1})
    assert PromptCache([other], tmp_path).dirs[0] != first.dirs[0]


def test_prompt_cache_precompute_then_gather_without_the_encoder(tiny_clip):
    """After precompute, batches are gathered from the cache: the encoder never runs again (its cost
    per batch is benchmarks' business, not a test's)."""
    prompts = [f"shape {i} in color {i % 7}" + " big" * (i % 5) for i in range(600)]
    encoder = CountingEncoder(tiny_clip)
    cache = PromptCache([encoder])
    cache.precompute(prompts, batch_size=128)
    assert len(encoder.seen) == len(prompts) and len(cache.tables[0]) == len(prompts)
    generator = torch.Generator().manual_seed(0)
    batches = [[prompts[i] for i in torch.randint(len(prompts), (64,), generator=generator)] for _ in range(50)]
    for batch in batches:
        emb = cache.encode(batch)[0]
    assert len(encoder.seen) == len(prompts)
    assert emb.tokens.shape[0] == 64
