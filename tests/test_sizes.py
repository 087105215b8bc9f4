"""The size registry and its parameter counts (counted on the meta device: no memory)."""
import pytest
import torch

from gentron.model import GenTron
from gentron.sizes import PAPER_PARAMS, SIZES, count_params, model_config, paper_config, param_breakdown


def test_paper_sizes_match_the_table():
    xl, g = model_config("XL/2"), model_config("G/2")
    assert (xl.depth, xl.hidden_size, xl.mlp_hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 4608, 16, 2)
    assert (g.depth, g.hidden_size, g.mlp_hidden_size, g.num_heads) == (48, 1664, 6656, 16)
    assert g.hidden_size // g.num_heads == 104
    for name in ("T/2", "S/2", "B/2", "T/4"):
        cfg = model_config(name)
        assert cfg.mlp_hidden_size == 4 * cfg.hidden_size and cfg.hidden_size // cfg.num_heads == 64


def test_g2_within_5_percent_of_paper():
    total = count_params(paper_config("G/2"))["total"]
    assert abs(total / PAPER_PARAMS["G/2"] - 1) < 0.05, total


def test_xl2_within_5_percent_of_paper():
    total = count_params(paper_config("XL/2"))["total"]
    assert abs(total / PAPER_PARAMS["XL/2"] - 1) < 0.05, total


def test_xl2_cross_attention_count_is_the_documented_one():
    n = count_params(paper_config("XL/2"))
    d, half = 1152, 14  # interleaved: 14 blocks read CLIP-L (768), 14 read T5-XXL (4096)
    linear = lambda i, o: i * o + o  # noqa: E731
    per_block = lambda w: linear(d, d) + linear(w, 2 * d) + linear(d, d) + 2 * d  # noqa: E731  q, kv, out, LN
    assert n["cross_attn"] == half * per_block(768) + half * per_block(4096)
    assert n["text_proj"] == linear(768, d) + linear(4096, d)  # pooled projections only


def test_adaln_xl2_is_dit_xl2_with_text_instead_of_classes():
    dit_xl2 = 675_129_632  # DiT-XL/2 as released: 1001-class table and a frozen 256-token pos_embed parameter
    d = 1152
    expected = dit_xl2 - 1001 * d - 256 * d + (768 * d + d)  # + our pooled CLIP-L projection
    assert count_params(paper_config("XL/2", conditioning="adaln", text="CLIP-L"))["total"] == expected


def test_meta_count_equals_real_model_and_breakdown_sums():
    cfg = model_config("T/4", input_size=16, in_channels=3, temporal=True, text_widths=(64, 32),
                       pooled_widths=(64, 32))
    real = GenTron(cfg)
    parts = param_breakdown(real)
    assert parts["total"] == real.num_params() == count_params(cfg)["total"]
    assert parts["temporal"] > 0 and parts["cross_attn"] > 0
    assert sum(v for k, v in parts.items() if k != "total") == parts["total"]


def test_model_config_overrides_and_errors():
    cfg = model_config("S/2", conditioning="adaln", learn_sigma=True, patch_size=2)
    assert cfg.conditioning == "adaln" and cfg.learn_sigma and cfg.depth == 12
    assert model_config("B/4").patch_size == 4
    with pytest.raises(ValueError, match=r"unknown model size 'Q/2'; known sizes: .*XL/2.*G/2"):
        model_config("Q/2")
    with pytest.raises(ValueError, match="use size 'T/4'"):
        model_config("T/2", patch_size=4)
    with pytest.raises(ValueError, match="unknown GenTronConfig fields"):
        model_config("T/2", widht=3)
    assert set(SIZES) >= {"T/2", "S/2", "B/2", "XL/2", "G/2"}


def test_meta_device_allocates_nothing():
    with torch.device("meta"):
        model = GenTron(paper_config("G/2"))
    assert all(p.is_meta for p in model.parameters())
