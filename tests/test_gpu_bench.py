"""benchmarks/gpu_bench.py in its tiny CPU mode: the same functions a GPU run uses, at toy size, so the
benchmark cannot rot between GPU runs; and the FLOPs its MFU divides by."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_tiny_mode_runs_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                             "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    train, memory, sample = result["train"], result["memory"], result["sample"]
    assert result["tiny"] and result["device"] == "cpu"
    assert train["size"] == "XS/2" and train["images_per_s"] > 0 and train["forward_gflops_per_image"] > 0
    assert train["achieved_tflops"] == pytest.approx(3 * train["forward_gflops_per_image"] * train["images_per_s"]
                                                     / 1e3)
    assert train["mfu"] is None  # no peak is known for a CPU
    assert memory["fsdp2"] and memory["activation_checkpointing"] and memory["peak_memory_gb"] > 0
    assert memory["params"] > train["params"]
    assert sample["steps"] == 20 and sample["sampler"] == "dpmsolver++" and sample["images_per_s"] > 0
