"""The step benchmarks at toy size on the CPU, so they cannot rot between GPU runs: benchmarks/gpu_bench.py
times the trainer's own step (its weights after N steps equal gentron.train's, bit for bit), and
benchmarks/paper_step.py compares feature shards with encoders per batch and the host's time per step
before and after; and the FLOPs the MFU divides by."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gentron import sizes

REPO = Path(__file__).resolve().parent.parent


def test_flops_are_counted_as_dit_counts_them():
    """DiT-XL/2 at 256 px is 118.6 GFLOPs in DiT's table, which counts multiply-adds: 237.2 here."""
    flops = sizes.count_flops(sizes.paper_config("XL/2", "adaln", "CLIP-L"))
    assert flops / 2e9 == pytest.approx(118.6, rel=0.01)
    t5 = sizes.count_flops(sizes.paper_config("XL/2", "cross_attn", "CLIP-L+T5-XXL"), (77, 120))
    assert t5 > flops  # cross-attention over 197 text tokens adds to the image tokens' cost
    clip = sizes.paper_config("XS/2", input_size=8, temporal=True)
    assert sizes.count_flops(clip, frames=8) > 8 * sizes.count_flops(sizes.paper_config("XS/2", input_size=8))


@pytest.mark.slow
def test_tiny_mode_runs_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--tiny", "--host-repeats", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["device"] == "cpu" and result["gpus"] == 1
    small, large = result["train"]
    assert (small["size"], small["text_encoders"], large["size"], large["text_encoders"]) == \
        ("XS/2", "CLIP-L", "T/2", "CLIP-L+T5-XXL")
    assert large["activation_checkpointing"] and not small["activation_checkpointing"] and large["params"] > small["params"]
    for r in (small, large):
        assert r["images_per_s_per_gpu"] == pytest.approx(r["batch_per_gpu"] / r["s_per_step"])
        assert r["achieved_tflops_per_gpu"] == pytest.approx(3 * r["forward_gflops_per_image"] * r["images_per_s_per_gpu"] / 1e3)
        assert r["mfu"] is None and r["peak_memory_gb"] > 0 and r["precision"] == "fp32" and not r["fsdp2"]
        assert r["params_on_rank0"] == r["params"]  # one process: nothing sharded
    # The FLOPs are counted at the captions' real token counts, each within its encoder's length.
    assert len(large["text_tokens"]) == 2 and 0 < large["text_tokens"][0] <= 77 and 0 < large["text_tokens"][1] <= 120
    config = sizes.paper_config("XS/2", "cross_attn", "CLIP-L", input_size=8, text_widths=(32,), pooled_widths=(32,))
    assert small["forward_gflops_per_image"] * 1e9 == sizes.count_flops(config, tuple(small["text_tokens"]))
    assert result["host"]["lookups_per_step"] == 14 and result["host"]["world_size"] == 8


@pytest.mark.slow
def test_two_processes_shard_the_model_with_fsdp2(tmp_path):
    """Under torchrun (2 gloo processes here) the benchmark trains through FSDP2: each rank holds part of the weights."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "benchmarks/gpu_bench.py",
                           "--tiny", "--no-host", "--only", "XS/2", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(out.read_text())["train"]
    assert r["fsdp2"] and r["gpus"] == 2 and r["global_batch"] == 2 * r["batch_per_gpu"]
    assert r["params"] / 2 <= r["params_on_rank0"] < r["params"]  # about half of the weights on rank 0


def test_the_benchmarked_step_is_the_trainers(tmp_path):
    """Three steps of gpu_bench's loop leave the weights and the EMA that gentron.train leaves, bit for bit."""
    from argparse import Namespace

    from benchmarks import gpu_bench
    from gentron import distributed as D
    from gentron.checkpoint import load_checkpoint
    from gentron.config import load_config, to_dict
    from gentron.train import train

    args = Namespace(tiny=True, images=16, no_compile=False)
    gpu_bench.save_vae(tmp_path / "vae", tiny=True)
    cell = gpu_bench.bench_cell("XS/2", "CLIP-L", False, 4, 1, tmp_path, args)
    cell["model"].update(depth=2)
    cfg = load_config(cell)
    info = D.DistInfo()
    gpu_bench.encode(cfg, info, 16)
    s_per_step, lengths, model, ema, data = gpu_bench.run_steps(cfg, 3, 0, info)
    data.close()
    assert s_per_step > 0 and len(lengths) == 3
    steps = to_dict(cfg)
    steps["train"].update(steps=3, log_every=1, ckpt_every=100)
    state = load_checkpoint(train(load_config(steps), tmp_path / "run").checkpoint)
    assert state["step"] == 3
    ours = model.state_dict()
    assert state["model"].keys() == ours.keys()
    assert all(torch.equal(state["model"][k], ours[k]) for k in ours)
    assert all(torch.equal(state["ema"][k], ema[k]) for k in ema)
    assert not torch.equal(ema["final_layer.linear.weight"], ours["final_layer.linear.weight"])  # the EMA lags


@pytest.mark.slow
def test_paper_step_compares_shards_with_per_batch_and_the_host_time(tmp_path):
    from benchmarks import paper_step

    out = tmp_path / "paper_step.json"
    paper_step.main(["--steps", "4", "--log-every", "2", "--batch", "4", "--images", "16", "--depth", "1",
                     "--width", "32", "--t5-width", "32", "--t5-layers", "1", "--tokens", "16", "--vae-width", "8",
                     "--repeats", "1", "--frames", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    shards, per_batch = r["encode_modes"]["shards"], r["encode_modes"]["per_batch"]
    assert (shards["encode"], per_batch["encode"]) == ("shards", "per_batch")
    # Shards build no encoder: their per-step "encode" time is the stored features' copy, well under
    # running the T5 and the VAE on each batch.
    assert per_batch["encode_s_per_step"] > 3 * shards["encode_s_per_step"]
    flops = r["encode_modes"]["flops_per_image"]
    assert flops["text_encoders"] > 0 and flops["vae_encoder"] > 0
    assert r["encode_modes"]["flop_ratio_per_batch_over_shards"] == pytest.approx(
        (flops["model_step"] + flops["text_encoders"] + flops["vae_encoder"]) / flops["model_step"])
    (host,) = r["host"]
    assert host["lookups_per_step"] == 14 and host["before_ms"] > 0 and host["after_ms"] > 0
