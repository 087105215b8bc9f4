"""GenTron model core: shapes, initialisation, conditioning paths, masks, T2I -> T2V, checkpointing."""
import numpy as np
import pytest
import torch

from gentron.embeddings import PositionEmbedding2D, sincos_2d
from gentron.model import GenTron, GenTronConfig
from gentron.text.base import TextEmbedding

torch.set_num_threads(1)
B, C, S = 2, 3, 8  # batch, channels, latent side


def tiny(**overrides) -> GenTronConfig:
    values = dict(input_size=S, patch_size=2, in_channels=C, depth=2, hidden_size=32, mlp_hidden_size=64,
                  num_heads=2, conditioning="cross_attn", text_widths=(12,), pooled_widths=(10,),
                  learn_sigma=False, max_frames=8)
    values.update(overrides)
    return GenTronConfig(**values)


def build(seed=0, trained=True, **overrides) -> GenTron:
    """A tiny model; `trained` perturbs every weight so zero-initialised branches are open."""
    torch.manual_seed(seed)
    model = GenTron(tiny(**overrides))
    if trained:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def make_text(config: GenTronConfig, batch=B, length=5, seed=1) -> list[TextEmbedding]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for tw, pw in zip(config.text_widths, config.pooled_widths):
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[0, 3:] = False  # sample 0 has two padded tokens
        out.append(TextEmbedding(torch.randn(batch, length, tw, generator=g), mask,
                                 torch.randn(batch, pw, generator=g)))
    return out


def inputs(batch=B, frames=None, seed=2):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, C, S, S) if frames is None else (batch, frames, C, S, S)
    return torch.randn(shape, generator=g), torch.tensor([10, 900][:batch] + [500] * max(0, batch - 2))


def block_outputs(model, fn):
    """Run fn() and return {block index: output} captured with forward hooks."""
    outs = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone()))
               for i, b in enumerate(model.blocks)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return outs


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_shapes_image_and_video(learn_sigma):
    model = build(learn_sigma=learn_sigma, temporal=True)
    text = make_text(model.config)
    c_out = 2 * C if learn_sigma else C
    x, t = inputs()
    assert model(x, t, text).shape == (B, c_out, S, S)
    v, t = inputs(frames=4)
    assert model(v, t, text).shape == (B, 4, c_out, S, S)
    assert model(v, t, text, motion_free=torch.tensor([True, False])).shape == (B, 4, c_out, S, S)


def test_float_timesteps_and_non_temporal_video():
    model = build()
    text = make_text(model.config)
    v, _ = inputs(frames=3)
    out = model(v, torch.tensor([0.5, 999.0]), text)
    assert out.shape == (B, 3, C, S, S) and torch.isfinite(out).all()


@pytest.mark.parametrize("conditioning,temporal", [("adaln", False), ("cross_attn", False), ("cross_attn", True)])
def test_every_block_is_identity_at_init(conditioning, temporal):
    model = build(trained=False, conditioning=conditioning, temporal=temporal, depth=3)
    text = make_text(model.config)
    x, t = inputs(frames=3 if temporal else None)
    ins = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: ins.__setitem__(i, a[0].clone()))
             for i, b in enumerate(model.blocks)]
    outs = block_outputs(model, lambda: model(x, t, text, motion_free=torch.tensor([False, False])
                                              if temporal else None))
    for h in hooks:
        h.remove()
    for i in range(3):
        assert torch.equal(outs[i], ins[i]), f"block {i} is not the identity at init"
    # Zero final layer: the whole model predicts zeros at init, as DiT.
    assert model(x, t, text).abs().max() == 0


def test_cross_attention_reads_tokens_adaln_only_pooled():
    for conditioning, depends in [("cross_attn", True), ("adaln", False)]:
        model = build(conditioning=conditioning)
        text = make_text(model.config)
        x, t = inputs()
        other = [TextEmbedding(e.tokens + torch.randn_like(e.tokens), e.mask, e.pooled) for e in text]
        changed = not torch.allclose(model(x, t, text), model(x, t, other))
        assert changed == depends, conditioning
        # Pooled text drives both.
        pooled = [TextEmbedding(e.tokens, e.mask, e.pooled + 1.0) for e in text]
        assert not torch.allclose(model(x, t, text), model(x, t, pooled))
    assert all(block.cross_attn is None for block in build(conditioning="adaln").blocks)  # no unused weights


def test_padded_tokens_are_ignored_and_empty_text_is_finite():
    model = build()
    text = make_text(model.config)
    x, t = inputs()
    ref = model(x, t, text)
    tokens = text[0].tokens.clone()
    tokens[~text[0].mask] = 1e3  # only padding changes
    out = model(x, t, [TextEmbedding(tokens, text[0].mask, text[0].pooled)])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # A row with every token padded: no NaN, and its tokens no longer matter.
    empty = text[0].mask.clone()
    empty[1] = False
    a = model(x, t, [TextEmbedding(text[0].tokens, empty, text[0].pooled)])
    b = model(x, t, [TextEmbedding(text[0].tokens * 3, empty, text[0].pooled)])
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[0], ref[0], rtol=0, atol=1e-6)  # other rows unaffected


def test_interleaved_cross_attention_block_i_reads_encoder_i_mod_2():
    model = build(depth=4, text_widths=(12, 20), pooled_widths=(10, 6))
    text = make_text(model.config)
    x, t = inputs()
    contexts = {}
    hooks = [b.cross_attn.register_forward_pre_hook(lambda m, a, i=i: contexts.__setitem__(i, a[1].clone()))
             for i, b in enumerate(model.blocks)]
    model(x, t, text)
    ref_ctx = dict(contexts)
    ref_out = block_outputs(model, lambda: model(x, t, text))
    for enc in (0, 1):
        perturbed = list(text)
        e = text[enc]
        perturbed[enc] = TextEmbedding(e.tokens + torch.randn_like(e.tokens), e.mask, e.pooled)
        out = block_outputs(model, lambda: model(x, t, perturbed))
        for i in range(4):
            same_ctx = torch.equal(contexts[i], ref_ctx[i])
            assert same_ctx == (i % 2 != enc), f"block {i} context after perturbing encoder {enc}"
        # The first block reading the perturbed encoder is the first whose output changes.
        for i in range(4):
            assert torch.allclose(out[i], ref_out[i]) == (i < enc), f"block {i} output, encoder {enc}"
    for h in hooks:
        h.remove()


def test_fresh_t2v_from_t2i_equals_t2i_per_frame():
    t2i = build(seed=3, learn_sigma=True)
    t2v = build(seed=4, trained=False, learn_sigma=True, temporal=True)
    t2v.load_t2i_weights(t2i.state_dict())
    text = make_text(t2i.config)
    v, t = inputs(frames=4)
    video_out = t2v(v, t, text, motion_free=torch.tensor([False, True]))
    per_frame = torch.stack([t2i(v[:, f], t, text) for f in range(4)], dim=1)
    torch.testing.assert_close(video_out, per_frame, rtol=0, atol=1e-6)
    # A temporal model given images treats them as one-frame clips.
    torch.testing.assert_close(t2v(v[:, 0], t, text), t2i(v[:, 0], t, text), rtol=0, atol=1e-6)
    assert all(torch.equal(b.temporal_attn.attn.proj.weight, torch.zeros_like(b.temporal_attn.attn.proj.weight))
               for b in t2v.blocks)


def test_load_t2i_weights_reports_bad_keys():
    t2v = build(trained=False, temporal=True)
    sd = build().state_dict()
    del sd["blocks.0.attn.qkv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing non-temporal keys.*blocks\.0\.attn\.qkv\.weight.*unexpected.*extra"):
        t2v.load_t2i_weights(sd)
    with pytest.raises(ValueError, match="already a T2V checkpoint"):
        t2v.load_t2i_weights(build(temporal=True).state_dict())
    with pytest.raises(ValueError, match="shape mismatches"):
        t2v.load_t2i_weights(build(learn_sigma=True).state_dict())


def test_motion_free_is_per_sample():
    model = build(temporal=True)  # temporal output projections are nonzero after `trained`
    assert model.blocks[0].temporal_attn.attn.proj.weight.abs().sum() > 0
    text = make_text(model.config)
    v, t = inputs(frames=4)
    motion_free = torch.tensor([True, False])
    ref = model(v, t, text, motion_free=motion_free)
    v2 = v.clone()
    v2[:, 1] += torch.randn_like(v2[:, 1])  # change frame 1 of both clips
    out = model(v2, t, text, motion_free=motion_free)
    others = [0, 2, 3]
    torch.testing.assert_close(out[0, others], ref[0, others], rtol=0, atol=1e-6)  # motion-free: independent
    assert not torch.allclose(out[1, others], ref[1, others], atol=1e-4)          # motion on: frames interact
    # Each half of a mixed batch equals that clip run alone with its own flag.
    alone = model(v[1:], t[1:], [e[1:] for e in text], motion_free=torch.tensor([False]))
    torch.testing.assert_close(ref[1:], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(v[1:], t[1:], [e[1:] for e in text]), alone, rtol=0, atol=1e-6)


def test_activation_checkpointing_same_outputs_and_gradients():
    def run(ckpt):
        model = build(seed=5, temporal=True, grad_checkpointing=ckpt).train()
        text = make_text(model.config)
        v, t = inputs(frames=2)
        out = model(v, t, text, motion_free=torch.tensor([True, False]))
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=1e-7, msg=name)


def test_positions_at_a_new_resolution():
    dim = 32
    small, big = PositionEmbedding2D(dim, 4), PositionEmbedding2D(dim, 8)
    # Absolute positions: the 4x4 grid is the top-left corner of the 8x8 one.
    torch.testing.assert_close(big(8, 8).view(8, 8, dim)[:4, :4].reshape(16, dim), small(4, 4))
    torch.testing.assert_close(small(8, 8), big(8, 8))  # computed on the fly == cached
    assert small(3, 5).shape == (15, dim)
    # DiT's numpy table (models.get_2d_sincos_pos_embed), reproduced exactly.
    def dit_1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.meshgrid(np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32))
    dit = np.concatenate([dit_1d(dim // 2, grid[0]), dit_1d(dim // 2, grid[1])], axis=1)
    np.testing.assert_allclose(sincos_2d(dim, 4, 4).numpy(), dit, atol=1e-6)
    # A checkpoint trained at 8x8 loads strictly into a model built for 16x16 and runs at both sizes.
    model = build()
    assert not any("pos" in k for k in model.state_dict())
    bigger = GenTron(tiny(input_size=16))
    bigger.load_state_dict(model.state_dict())
    text = make_text(model.config)
    x, t = inputs()
    torch.testing.assert_close(bigger(x, t, text), model(x, t, text))
    assert bigger(torch.randn(B, C, 16, 16), t, text).shape == (B, C, 16, 16)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="conditioning"):
        tiny(conditioning="concat")
    with pytest.raises(ValueError, match="one entry per text encoder"):
        tiny(text_widths=(12, 12))
    model = build()
    x, t = inputs()
    with pytest.raises(ValueError, match="1 text encoder"):
        model(x, t, make_text(model.config) * 2)
    with pytest.raises(ValueError, match="token width 12"):
        model(x, t, make_text(tiny(text_widths=(7,))))
    video = build(temporal=True)
    with pytest.raises(ValueError, match="max_frames"):
        video(torch.randn(1, 9, C, S, S), torch.tensor([1]), make_text(video.config, batch=1))

