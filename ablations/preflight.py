"""What a plan loads and what it costs, checked before anything runs or is submitted.

`missing(plan)`: every weight (VAE, text encoders, the evaluators' models), data path, training
checkpoint (`train.init_from`), prompt file and reference the plan's cells will load and this
machine cannot find, each with the command or setting that supplies it. Only local files and the
Hugging Face cache are looked at: nothing is downloaded.

`cell_costs(config, gpus)`: the cell's transformer parameters and forward FLOPs, counted exactly by
gentron.sizes, and an estimate of its training GPU-hours from published throughput:

    DiT-XL/2, 256 px: 0.81 training steps/s at global batch 256 on 8 A100 (the DiT repository's
    PyTorch training script, github.com/facebookresearch/DiT), i.e. 25.9 images/s per A100.

A cell's images per second per GPU are DiT-XL/2's scaled by the ratio of forward FLOPs per image
(a clip of T frames counts T images' tokens). The estimate carries that script's precision and
kernels; `benchmarks/gpu_bench.py` measures this code's own throughput on a GPU.
"""
from __future__ import annotations

import functools
import glob
import re
from dataclasses import dataclass
from pathlib import Path

from ablations.grid import CONF_DIR, Plan, registry

# DiT's published training throughput (see the module docstring).
DIT_XL2_STEPS_PER_S, DIT_XL2_BATCH, DIT_XL2_GPUS = 0.81, 256, 8
DIT_XL2_IMAGES_PER_GPU_S = DIT_XL2_STEPS_PER_S * DIT_XL2_BATCH / DIT_XL2_GPUS
THROUGHPUT_SOURCE = ("DiT-XL/2 0.81 steps/s at batch 256 on 8 A100 (facebookresearch/DiT), scaled by forward "
                     "FLOPs per image")
# Token widths and lengths of the encoders the grids name, for counting without loading them.
KNOWN_T5 = {"google/flan-t5-xxl": 4096, "google/t5-v1_1-xxl": 4096, "google/flan-t5-xl": 2048}
T5_TOKENS, CLIP_TOKENS = 120, 77
ENV = re.compile(r"\$\{oc\.env:([A-Z0-9_]+)")


@dataclass(frozen=True)
class Need:
    what: str  # the thing and where it was looked for
    used_by: str  # which setting of which cells loads it
    fix: str  # the command or setting that supplies it

    def line(self) -> str:
        return f"  - {self.what} ({self.used_by}). Supply: {self.fix}"


# --- what is missing ----------------------------------------------------------------------------

def missing(p: Plan) -> list[Need]:
    """Everything the plan's cells load that is not on this machine, each named once."""
    found: dict[tuple, Need] = {}
    for cell in p.cells:
        for need in _cell_needs(cell.config, frozenset(cell.encoders)):
            found.setdefault((need.what, need.fix), need)
    return list(found.values())


def format_missing(p: Plan) -> str:
    needs = missing(p)
    lines = [f"GPU-h (est.): {THROUGHPUT_SOURCE}"] if p.run.profile != "embedded" else []
    if not needs:
        return "\n".join(lines + ["preflight: every weight, data path and reference the plan loads is in place"])
    return "\n".join(lines + [f"preflight: {len(needs)} weights, data paths or references the plan loads are "
                              "missing; nothing runs or is submitted until they are supplied:"]
                     + [n.line() for n in needs])


def require(p: Plan) -> None:
    """Refuse to run or submit a plan that would fail on a missing input, naming the first and the
    dry run that lists them all."""
    needs = missing(p)
    if needs:
        raise FileNotFoundError(f"{len(needs)} weights, data paths or references the plan loads are missing "
                                f"(dry_run=true lists them all), e.g. {needs[0].what} ({needs[0].used_by}); supply: "
                                f"{needs[0].fix}")


def _cell_needs(config: dict, trained: frozenset = frozenset()) -> list[Need]:
    """`trained`: folders of text encoders the run trains itself first (gentron.text.pretrain)."""
    needs = []
    for spec in config["text_encoders"]:
        folder = spec.get("path") or str(spec.get("model") or "").removeprefix("local-dir:")
        if folder in trained:
            continue
        needs += _encoder_needs(spec)
    vae = config["vae"]
    if vae["kind"] == "autoencoder_kl" and not _hf_available(vae["path"]):
        needs.append(Need(f"VAE weights '{vae['path']}': {_not_found(vae['path'])}", "vae.path",
                          f"`huggingface-cli download {vae['path']}`, or vae.path=/path/to/the/folder"))
    needs += _data_needs(config["data"])
    init = config["train"]["init_from"]
    if init and not Path(init).is_file():
        needs.append(Need(f"checkpoint {init}: no such file", "train.init_from",
                          "train.init_from=<a trained cell's checkpoints/last.pt> (for text-to-video: the "
                          "finished T2I grid's cell; run it first)"))
    for name in config["sample"]["prompt_sets"]:
        spec = registry("prompt_sets")[name]
        if spec["kind"] == "files" and not glob.glob(spec["glob"]):
            variable = _env_name("prompt_sets", name)
            needs.append(Need(f"prompt set '{name}': no file matches {spec['glob']}", "sample.prompt_sets",
                              _env_fix(variable, _PROMPT_FIX.get(name, "the prompt files"))))
    for name in config["eval"]["metrics"]:
        needs += _metric_needs(name, config)
    return needs


_PROMPT_FIX = {
    "t2i_compbench_val": "the examples/dataset folder of a T2I-CompBench checkout "
                         "(`git clone https://github.com/Karine-Huang/T2I-CompBench`)",
    "coco30k": "the prompts.jsonl of `python -m eval.coco plan --captions annotations/captions_val2014.json --out DIR`",
}


def _encoder_needs(spec: dict) -> list[Need]:
    kind = spec["kind"]
    if kind in ("t5", "hf_clip"):
        path = spec["path"]
        if _hf_available(path):
            return []
        variable = "GENTRON_T5_XXL" if kind == "t5" else None
        return [Need(f"{kind} text encoder '{path}': {_not_found(path)}", "text_encoders",
                     f"`huggingface-cli download {path}`" + (f", or {variable}=/path/to/the/folder" if variable else ""))]
    if kind != "clip":
        return []  # tiny encoders are built from their seed
    model, pretrained = spec.get("model", "ViT-L-14"), spec.get("pretrained", "openai")
    fix = "GENTRON_CLIP_L_WEIGHTS=/path/to/checkpoint (an open_clip checkpoint file)"
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            return [Need(f"open_clip folder {folder}: no open_clip_config.json", "text_encoders",
                         "GENTRON_CLIP_L=local-dir:/path/to/a/folder/with/open_clip_config.json")]
    if pretrained is None or Path(pretrained).expanduser().is_file() or model.startswith("local-dir:"):
        return []
    if "/" in str(pretrained) or str(pretrained).endswith((".pt", ".bin", ".safetensors", ".pth")):
        return [Need(f"open_clip checkpoint {pretrained}: no such file", "text_encoders", fix)]
    source = _open_clip_source(model, pretrained)
    if source is None or _open_clip_cached(source):
        return []
    return [Need(f"open_clip weights {model}/{pretrained}: not in the Hugging Face cache ({_hub_cache()})",
                 "text_encoders", f"`huggingface-cli download {source[0]}`, or {fix}")]


def _data_needs(data: dict) -> list[Need]:
    kind, path = data["kind"], data["path"]
    if kind == "compshapes":
        return []
    fix = f"data.path=... ({'a brace pattern of tar shards' if kind == 'webdataset' else 'an existing path'})"
    if kind == "webdataset":
        import braceexpand

        local = [u for u in braceexpand.braceexpand(path) if "://" not in u and not u.startswith("pipe:")]
        absent = [u for u in local if not Path(u).exists()]
        if absent:
            return [Need(f"{len(absent)} of {len(local)} WebDataset shards of {path}, e.g. {absent[0]}", "data.path", fix)]
    elif not Path(path).exists():
        return [Need(f"{kind} {path}: no such {'file' if kind == 'manifest' else 'folder'}", "data.path", fix)]
    if data["encode"] == "shards" and not Path(data["features_dir"]).is_dir():
        return [Need(f"feature shards {data['features_dir']}: no such folder", "data.features_dir",
                     "the encode stage: python -m gentron.data.encode cell.yaml --out <features_dir> "
                     "(docs/training_at_scale.md)")]
    return []


def _metric_needs(name: str, config: dict) -> list[Need]:
    options = registry("metrics")[name].get("options", {})
    used_by = f"metric {name}"
    needs = []
    if name == "fid":
        ref = options["ref"]
        if not Path(ref).exists():
            needs.append(Need(f"FID reference {ref}: no such folder or statistics file", used_by,
                              _env_fix(_env_name("metrics", name, "ref"), "reference images from `python -m eval.coco "
                                       "refs` or statistics from `python -m eval.fid make-stats`")))
        if options.get("extractor", "inception") == "inception":
            from eval.weights import cleanfid_inception

            needs += _try(lambda: cleanfid_inception(options.get("mode", "clean")), "clean-fid's Inception weights",
                          used_by, "download the file its message names to that path, or GENTRON_FID_EXTRACTOR=random "
                          "(not comparable to papers)")
    elif name == "clip_score":
        model = options["model"]
        if not model.startswith("ViT-") and not _hf_available(model):
            needs.append(Need(f"CLIP score model '{model}': {_not_found(model)}", used_by,
                              _env_fix(_env_name("metrics", name, "model"), f"`huggingface-cli download {model}`")))
    elif name == "t2i_compbench":
        for key in ("blip", "detector", "clip"):
            if not _hf_available(options[key]):
                needs.append(Need(f"T2I-CompBench {key} model '{options[key]}': {_not_found(options[key])}", used_by,
                                  _env_fix(_env_name("metrics", name, key),
                                           f"`huggingface-cli download {options[key]}`")))
        if not Path(options["checkout"]).is_dir():
            needs.append(Need(f"T2I-CompBench dataset folder {options['checkout']}: not found", used_by,
                              _env_fix(_env_name("metrics", name, "checkout"), _PROMPT_FIX["t2i_compbench_val"])))
        if not _spacy_model():
            from eval.compbench.questions import INSTALL_HINT

            needs.append(Need("spaCy's English model en_core_web_sm: not installed", used_by, INSTALL_HINT))
    return needs


def _try(check, what: str, used_by: str, fix: str) -> list[Need]:
    try:
        check()
    except FileNotFoundError as e:
        return [Need(f"{what}: {str(e).split('. ')[0]}", used_by, fix)]
    return []


# --- lookups that never download ----------------------------------------------------------------

def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _not_found(name: str) -> str:
    return f"not a local folder and not in the Hugging Face cache ({_hub_cache()})"


def _hf_available(name_or_path: str | None) -> bool:
    """A local folder, or a hub repository whose config is in the cache."""
    if not name_or_path:
        return False
    if Path(name_or_path).expanduser().exists():
        return True
    if name_or_path.count("/") != 1 or name_or_path.startswith(("/", ".", "~")):
        return False
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "model_index.json"):
        if isinstance(try_to_load_from_cache(name_or_path, filename), str):
            return True
    return False


def _open_clip_source(model: str, pretrained: str) -> tuple[str, tuple[str, ...]] | None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    hub = (cfg or {}).get("hf_hub", "").strip("/")
    if not hub:
        return None  # a URL-only tag: open_clip's own cache, not checked here
    return hub, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip_cached(source: tuple[str, tuple[str, ...]]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(source[0], f), str) for f in source[1])


@functools.lru_cache(maxsize=1)
def _spacy_model() -> bool:
    import importlib.util

    from eval.compbench.questions import MODEL_PACKAGES

    return any(importlib.util.find_spec(package) for package in MODEL_PACKAGES)


@functools.lru_cache(maxsize=None)
def _raw(name: str) -> str:
    return (CONF_DIR / f"{name}.yaml").read_text(encoding="utf-8")


def _env_name(registry_name: str, entry: str, option: str | None = None) -> str | None:
    """The environment variable a registry entry (ablations/conf/<registry_name>.yaml) reads, if any."""
    text, inside, key = _raw(registry_name), False, option or "glob"
    for line in text.splitlines():
        if not line.startswith(" ") and line.split(":")[0].strip() == entry:
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        if inside and line.strip().startswith(f"{key}:"):
            match = ENV.search(line)
            return match.group(1) if match else None
    return None


def _env_fix(variable: str | None, source: str) -> str:
    """`source` (a command or what to point at), and the variable that points at a local copy."""
    if source.startswith("`"):
        return f"{source}, or {variable}=/path/to/a/local/copy" if variable else source
    return f"{variable}=<{source}>" if variable else source


# --- what each cell costs -----------------------------------------------------------------------

def _encoder_shape(spec: dict) -> tuple[int, int, int]:
    """(token width, pooled width, tokens) of a text encoder spec, read from its config where local."""
    import json

    kind = spec["kind"]
    if kind in ("tiny_clip", "tiny_t5"):
        width = spec.get("width", 64)
        return width, spec.get("pooled_width") or width, CLIP_TOKENS if kind == "tiny_clip" else 128
    if kind == "t5":
        config = Path(spec["path"]).expanduser() / "config.json"
        width = json.loads(config.read_text())["d_model"] if config.is_file() else KNOWN_T5.get(spec["path"], 4096)
        return width, width, spec.get("max_length", T5_TOKENS)
    if kind == "clip":
        model = spec.get("model", "ViT-L-14")
        if model.startswith("local-dir:"):
            path = Path(model.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
            cfg = json.loads(path.read_text())["model_cfg"] if path.is_file() else None
        else:
            import open_clip

            cfg = open_clip.get_model_config(model)
        if cfg:
            return cfg["text_cfg"]["width"], cfg["embed_dim"], cfg["text_cfg"].get("context_length", CLIP_TOKENS)
    return 768, 768, CLIP_TOKENS  # hf_clip and unknown models: CLIP-L's


def _latent(vae: dict, resolution: int) -> tuple[int, int]:
    """(channels, side) of the model's input: pixels, or an SD-layout VAE's latents."""
    import json

    if vae["kind"] == "identity":
        return 3, resolution
    config = Path(vae["path"] or "").expanduser() / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        return c.get("latent_channels", 4), resolution // 2 ** (len(c.get("block_out_channels", [0] * 4)) - 1)
    return 4, resolution // 8


@functools.lru_cache(maxsize=256)
def _counted(key: str) -> tuple[int, int]:
    import json

    from gentron import sizes

    args = json.loads(key)
    config = sizes.model_config(args["size"], **args["overrides"])
    return sizes.count_params(config)["total"], sizes.count_flops(config, tuple(args["lengths"]), args["frames"])


def cell_costs(config: dict, gpus: int | None) -> dict:
    """{params, gflops (forward, per image or clip), gpu_hours, hours (on `gpus`)} of one cell."""
    import json

    m, data = config["model"], config["data"]
    shapes = [_encoder_shape(s) for s in config["text_encoders"]]
    channels, side = _latent(config["vae"], data["resolution"])
    frames = data["num_frames"] if data["video"] else 1
    overrides = {k: m[k] for k in ("depth", "hidden_size", "mlp_hidden_size", "num_heads") if m.get(k)}
    overrides.update(input_size=side, in_channels=channels, conditioning=m["conditioning"],
                     learn_sigma=m["learn_sigma"], text_widths=[s[0] for s in shapes],
                     pooled_widths=[s[1] for s in shapes], temporal=bool(data["video"]),
                     max_frames=max(frames, 8))
    key = json.dumps({"size": m["size"], "overrides": overrides, "lengths": [s[2] for s in shapes],
                      "frames": frames}, sort_keys=True)
    params, flops = _counted(key)
    dit_params, dit_flops = _counted(json.dumps({"size": "XL/2", "overrides": dict(
        input_size=32, in_channels=4, conditioning="adaln", learn_sigma=True, text_widths=[768],
        pooled_widths=[768], temporal=False, max_frames=8), "lengths": [CLIP_TOKENS], "frames": 1}, sort_keys=True))
    del dit_params
    images_per_gpu_s = DIT_XL2_IMAGES_PER_GPU_S * dit_flops / flops  # samples (images or clips) per s
    gpu_hours = config["train"]["steps"] * config["train"]["batch_size"] / images_per_gpu_s / 3600
    return {"params": params, "gflops": flops / 1e9, "gpu_hours": gpu_hours,
            "hours": gpu_hours / gpus if gpus else None}


def cost_columns(p: Plan, gpus: int | None) -> list[dict]:
    """The plan table's cost columns per cell: params (M), GPUs, estimated GPU-hours."""
    rows = []
    for cell in p.cells:
        c = cell_costs(cell.config, gpus)
        rows.append({"params": f"{c['params'] / 1e6:.1f}M", "GPUs": gpus if gpus else "-",
                     "GPU-h (est.)": _hours(c["gpu_hours"])})
    return rows


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def with_costs(p: Plan, table):
    """The plan table with each cell's parameters, and for GPU profiles its GPUs and GPU-hours."""
    import pandas as pd

    gpus = plan_gpus(p)
    costs = pd.DataFrame(cost_columns(p, gpus))
    if p.run.profile == "embedded" and not gpus:
        costs = costs[["params"]]
    return pd.concat([table, costs], axis=1)


def plan_gpus(p: Plan) -> int | None:
    """GPUs a cell runs on: the SLURM profile's nodes x GPUs per node, else this machine's GPUs."""
    if p.run.slurm:
        from slurm.launcher import load_profile

        profile = load_profile(p.run.slurm)
        return profile["nodes"] * profile["gpus_per_node"] or None
    import torch

    return torch.cuda.device_count() or None
