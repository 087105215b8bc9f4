"""The plan's GPU-hours (ablations.gpu_hours): counted FLOPs per stage at one calibrated rate. The frozen
encoders cost the train stage with data.encode=per_batch and an encode stage of one pass with shards;
sampling scales with NFE x guidance branches x images; the rate is DiT's train.py on A100s."""
import json

import pytest
import torch

from ablations import gpu_hours as gh
from gentron.config import load_config, resolve, to_dict
from gentron.generate import sampling_cost
from gentron.sizes import count_flops, paper_config
from tests.support.train_fixtures import tiny_config

T5 = {"d_model": 64, "num_heads": 4, "d_kv": 16, "d_ff": 128, "num_layers": 2, "vocab_size": 384,
      "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
       "block_out_channels": [8, 16, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4}


def _cell(tmp_path, encode: str, **sample):
    """A cell with a T5 encoder and an AutoencoderKL known by their config.json files (the cost model
    reads the architecture only)."""
    for name, config in (("t5", T5), ("vae", VAE)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    return tiny_config(tmp_path, text_encoders=[{"kind": "t5", "path": str(tmp_path / "t5"), "max_length": 32}],
                       vae={"kind": "autoencoder_kl", "path": str(tmp_path / "vae"), "scaling_factor": 0.18215},
                       data={"resolution": 64, "num_train": 500, "encode": encode, "features_dir": str(tmp_path / "f")},
                       train={"steps": 1000, "batch_size": 32}, sample={"steps": 20, **sample},
                       eval={"metrics": ["fid", "clip_score"]})


def _model_flops(cfg):
    return count_flops(resolve(cfg), (32,))


def test_the_transformer_formula_counts_what_torch_counts_in_the_real_t5():
    """The T5 encoder's FLOPs from its config equal FlopCounterMode's count of transformers' T5 on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**T5))
        with FlopCounterMode(display=False) as counter:
            model(input_ids=torch.zeros(1, 32, dtype=torch.long))
    formula = gh.transformer_flops(32, 64, 2, 4 * 16, 128, gated=True)
    assert formula == counter.get_total_flops()


def test_per_batch_encoders_cost_the_train_stage_shards_cost_one_encode_pass(tmp_path):
    per_batch, shards = _cell(tmp_path, "per_batch"), _cell(tmp_path, "shards")
    flops = _model_flops(shards)
    a, b = gh.stage_hours(per_batch, flops, None), gh.stage_hours(shards, flops, None)
    text = gh.transformer_flops(32, 64, 2, 64, 128, gated=True)
    vae = gh.vae_flops(shards.vae, 64)
    assert text > 0 and vae > 0
    seen = 1000 * 32
    assert a.train - b.train == pytest.approx(seen * (text + vae) / gh.rate() / 3600, rel=1e-9)
    assert b.train == pytest.approx(seen * 3 * flops / gh.rate() / 3600, rel=1e-9)
    # Shards: one pass over the data set, counted once; per_batch has no encode stage.
    assert a.encode == 0.0 and b.encode == pytest.approx(500 * (text + vae) / gh.rate() / 3600, rel=1e-9)
    # Activation checkpointing recomputes the forward: 4 forwards per training sample.
    checkpointed = load_config({**to_dict(shards), "train": {**to_dict(shards)["train"], "grad_checkpointing": True}})
    assert gh.stage_hours(checkpointed, flops, None).train == pytest.approx(b.train * 4 / 3, rel=1e-9)


def test_sampling_scales_with_nfe_branches_and_images(tmp_path):
    cfg = _cell(tmp_path, "shards")
    flops = _model_flops(cfg)
    h = {(steps, n): gh.stage_hours(_cell(tmp_path, "shards", steps=steps), flops, n).sample
         for steps in (20, 40) for n in (100, 200)}
    assert h[20, 200] == pytest.approx(2 * h[20, 100], rel=1e-9)  # images
    forward = sampling_cost(cfg, 100).flops_per_forward
    assert h[40, 100] - h[20, 100] == pytest.approx(20 * 2 * 100 * forward / gh.rate() / 3600, rel=1e-9)  # NFE x CFG
    decode = gh.vae_flops(cfg.vae, 64, "decode")
    text = gh.transformer_flops(32, 64, 2, 64, 128, gated=True)
    assert h[20, 100] == pytest.approx(100 * (20 * 2 * forward + decode + text) / gh.rate() / 3600, rel=1e-9)
    # Evaluation: each image through FID's Inception-v3 and CLIP score's ViT-B/32.
    evaluate = gh.stage_hours(cfg, flops, 100).evaluate
    assert evaluate == pytest.approx(100 * (gh.inception_flops() + gh.vit_flops(224, 32, 768, 12)) / gh.rate() / 3600)


def test_motion_free_guidance_samples_three_branches(tmp_path):
    video = tiny_config(tmp_path, data={"video": True, "num_frames": 4}, sample={"steps": 10, "mfg_scale": 2.0})
    plain = tiny_config(tmp_path, data={"video": True, "num_frames": 4}, sample={"steps": 10})
    flops = count_flops(resolve(video), (77,), 4)
    assert sampling_cost(video, 10).flops_per_forward == flops
    extra = gh.stage_hours(video, flops, 10).sample - gh.stage_hours(plain, flops, 10).sample
    assert extra == pytest.approx(10 * 10 * flops / gh.rate() / 3600, rel=1e-9)  # one branch more: 10 steps x 10 clips


def test_the_rate_is_dits_a100_throughput_with_its_vae_encoder():
    """DiT's train.py encodes every image with the SD VAE and trains DiT-XL/2 on it: a cell that does the
    same work per image (XL/2, adaLN, SD VAE per batch; its CLIP-L text encoder added) runs at
    0.81 x 256 / 8 images/s per A100, slowed by the text encoder's share of the FLOPs."""
    from gentron.config import VAEConfig

    dit = count_flops(paper_config("XL/2", "adaln", "CLIP-L"), (77,))
    sd_vae = gh.vae_flops(VAEConfig(kind="autoencoder_kl", path="stabilityai/sd-vae-ft-ema"), 256)
    assert 250e9 < sd_vae < 300e9  # the SD VAE encoder at 256 px, ~270 GFLOPs
    assert gh.rate() == pytest.approx(0.81 * 256 / 8 * (3 * dit + sd_vae), rel=1e-12)
    cfg = load_config({"model": {"size": "XL/2", "conditioning": "adaln", "learn_sigma": True},
                       "text_encoders": [{"kind": "clip"}],
                       "vae": {"kind": "autoencoder_kl", "path": "stabilityai/sd-vae-ft-ema", "scaling_factor": 0.18215},
                       "data": {"kind": "webdataset", "path": "/data/x", "resolution": 256, "encode": "per_batch"},
                       "train": {"steps": 1000, "batch_size": 256}})
    clip = gh.text_encoder_flops(cfg.text_encoders[0])
    images_per_s = 0.81 * 256 / 8 * (3 * dit + sd_vae) / (3 * dit + sd_vae + clip)
    assert gh.stage_hours(cfg, dit, None).train == pytest.approx(1000 * 256 / images_per_s / 3600, rel=1e-9)


def test_dry_run_prints_each_stages_gpu_hours_and_tasks(tmp_path, capsys):
    from ablations import costs, launch
    from ablations.grid import plan

    args = ["grid=conditioning", "seeds=[0]", "train.steps=20", "train.batch_size=16", "data.num_train=256",
            "sample.steps=5", "sample.prompt_sets=[compshapes_smoke]", "slurm=example", f"runs_dir={tmp_path}"]
    cell = plan(args).cells[0]
    c = costs.cell_costs(cell, gpus=8)
    assert c["images"] == 12 and c["encode_gpu_hours"] > 0 and c["sample_gpu_hours"] > 0
    launch.main([*args, "dry_run=true"])
    out = capsys.readouterr().out
    for column in ("train GPU-h (est.)", "encode GPU-h (est.)", "sample GPU-h (est.)", "evaluate GPU-h (est.)",
                   "tasks x GPUs", "train 1x8, sample 8x1, evaluate 4x1"):
        assert column in out
    assert "github.com/facebookresearch/DiT/issues/22" in out and "A100-hours" in out
