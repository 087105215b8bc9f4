"""What a plan loads, checked before anything runs or is submitted.

`missing(plan)`: every weight (VAE, text encoders, the evaluators' models), data path, training
checkpoint (`train.init_from`), prompt file and reference the plan's cells will load and this
machine cannot find, each with the command or setting that supplies it. Only local files and the
Hugging Face cache are looked at: nothing is downloaded. (What the cells cost: ablations.costs.)
"""
from __future__ import annotations

import functools
import glob
from dataclasses import dataclass
from pathlib import Path

from ablations import runfolder
from ablations.grid import Cell, Plan, load_grid
from ablations.registries import env_variable, registry
from gentron.config import DataConfig
from gentron.specs import ClipSpec, HFClipSpec, T5Spec


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
    source = init_from_command(p)
    for cell in p.cells:
        for need in _cell_needs(cell, source):
            found.setdefault((need.what, need.fix), need)
    return list(found.values())


def format_missing(p: Plan) -> str:
    needs = missing(p)
    if not needs:
        return "preflight: every weight, data path and reference the plan loads is in place"
    return "\n".join([f"preflight: {len(needs)} weights, data paths or references the plan loads are "
                      "missing; nothing runs or is submitted until they are supplied:"] + [n.line() for n in needs])


def require(p: Plan) -> None:
    """Refuse to run or submit a plan that would fail on a missing input, naming the first and the
    dry run that lists them all."""
    needs = missing(p)
    if needs:
        raise FileNotFoundError(f"{len(needs)} weights, data paths or references the plan loads are missing "
                                f"(dry_run=true lists them all), e.g. {needs[0].what} ({needs[0].used_by}); supply: "
                                f"{needs[0].fix}")


def init_from_command(p: Plan) -> str | None:
    """The command that trains the checkpoints a grid's `train.init_from: {grid: ..., arms: ...}` names
    (ablations.grid.InitFrom): that grid, with this plan's profile, seeds, preset, runs folder and the
    overrides its cells take (not those of keys its axes set); None without one."""
    ref = p.grid.base.get("train.init_from")
    if not isinstance(ref, dict) or "grid" not in ref:
        return None
    source = load_grid(ref["grid"], p.run.profile, p.run.runs_dir)
    swept = {key for arms in source.axes.values() for spec in arms.values() for key in spec} | {"train.init_from"}
    kept = [a for a in p.args[2:] if a.split("=", 1)[0].lstrip("+~") not in swept]
    record = {"name": ref["grid"], runfolder.PLAN_ARGS: [f"grid={ref['grid']}", f"profile={p.run.profile}", *kept]}
    return runfolder.rerun_command(record, p.run.runs_dir)


def _cell_needs(cell: Cell, init_command: str | None = None) -> list[Need]:
    """Text encoders the run trains itself first (cell.encoders, gentron.text.pretrain) are not needed.
    `init_command`: the command that trains the cell's train.init_from (init_from_command)."""
    config = cell.config
    needs = []
    for spec in config.text_encoders:
        if cell.recipe(spec) is None:
            needs += _encoder_needs(spec)
    vae = config.vae
    if vae.kind == "autoencoder_kl" and not _hf_available(vae.path):
        needs.append(Need(f"VAE weights '{vae.path}': {_not_found(vae.path)}", "vae.path",
                          f"`huggingface-cli download {vae.path}`, or vae.path=/path/to/the/folder"))
    needs += _data_needs(config.data)
    init = config.train.init_from
    if init and not Path(init).is_file():
        fix = (f"run the grid it starts from first: {init_command}" if init_command else
               "train.init_from=<a trained cell's checkpoints/last.pt> (for text-to-video: the finished T2I "
               "grid's cell; run it first)")
        needs.append(Need(f"checkpoint {init}: no such file", "train.init_from", fix))
    for name in config.sample.prompt_sets:
        needs += _prompt_set_needs(name, "sample.prompt_sets")
    for name in config.eval.metrics:
        needs += _metric_needs(name)
    t = config.train
    if t.eval_every and t.eval_prompt_set:  # sampled and scored while training (gentron.validation)
        needs += _prompt_set_needs(t.eval_prompt_set, "train.eval_prompt_set")
        for name in t.eval_metrics:
            if name not in config.eval.metrics:
                needs += _metric_needs(name)
    return needs


def _prompt_set_needs(name: str, used_by: str) -> list[Need]:
    spec = registry("prompt_sets")[name]
    if spec["kind"] == "files" and not glob.glob(spec["glob"]):
        variable = env_variable("prompt_sets", name, "glob")
        fix = _PROMPT_FIX.get(name, _PROMPT_FIX["coco30k"] if name.startswith("coco") else "the prompt files")
        return [Need(f"prompt set '{name}': no file matches {spec['glob']}", used_by, _env_fix(variable, fix))]
    return []


_PROMPT_FIX = {
    "t2i_compbench_val": "the examples/dataset folder of a T2I-CompBench checkout "
                         "(`git clone https://github.com/Karine-Huang/T2I-CompBench`)",
    "coco30k": "the prompts.jsonl of `python -m eval.coco plan --captions annotations/captions_val2014.json --out DIR`",
    "geneval": "the prompts/ folder of a GenEval checkout (`git clone https://github.com/djghosh13/geneval`)",
    "vbench": "a VBench checkout (`git clone https://github.com/Vchitect/VBench`): its prompts/all_dimension.txt",
}


def _encoder_needs(spec) -> list[Need]:
    if isinstance(spec, (T5Spec, HFClipSpec)):
        path = spec.path
        if _hf_available(path):
            return []
        variable = "GENTRON_T5_XXL" if spec.kind == "t5" else None
        return [Need(f"{spec.kind} text encoder '{path}': {_not_found(path)}", "text_encoders",
                     f"`huggingface-cli download {path}`" + (f", or {variable}=/path/to/the/folder" if variable else ""))]
    if not isinstance(spec, ClipSpec):
        return []  # tiny encoders are built from their seed
    model, pretrained = spec.model, spec.pretrained
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


def _data_needs(data: DataConfig) -> list[Need]:
    kind, path = data.kind, data.path
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
    if data.encode == "shards" and not Path(data.features_dir).is_dir():
        return [Need(f"feature shards {data.features_dir}: no such folder", "data.features_dir",
                     "the encode stage: python -m gentron.data.encode cell.yaml --out <features_dir> "
                     "(docs/training_at_scale.md)")]
    return []


def _metric_needs(name: str) -> list[Need]:
    options = registry("metrics")[name].get("options", {})
    used_by = f"metric {name}"
    needs = []
    if name == "fid":
        ref = options["ref"]
        if not Path(ref).exists():
            needs.append(Need(f"FID reference {ref}: no such folder or statistics file", used_by,
                              _env_fix(env_variable("metrics", name, "ref"), "reference images from `python -m eval.coco "
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
                              _env_fix(env_variable("metrics", name, "model"), f"`huggingface-cli download {model}`")))
    elif name == "t2i_compbench":
        for key in ("blip", "detector", "clip"):
            if not _hf_available(options[key]):
                needs.append(Need(f"T2I-CompBench {key} model '{options[key]}': {_not_found(options[key])}", used_by,
                                  _env_fix(env_variable("metrics", name, key),
                                           f"`huggingface-cli download {options[key]}`")))
        if not Path(options["checkout"]).is_dir():
            needs.append(Need(f"T2I-CompBench dataset folder {options['checkout']}: not found", used_by,
                              _env_fix(env_variable("metrics", name, "checkout"), _PROMPT_FIX["t2i_compbench_val"])))
        if not _spacy_model():
            from eval.compbench.questions import INSTALL_HINT

            needs.append(Need("spaCy's English model en_core_web_sm: not installed", used_by, INSTALL_HINT))
    elif name == "geneval":
        from eval.geneval import colors, detector

        if not Path(options["metadata"]).is_file():
            needs.append(Need(f"GenEval metadata {options['metadata']}: no such file", used_by,
                              _env_fix(env_variable("metrics", name, "metadata"), _PROMPT_FIX["geneval"])))
        needs += _try(lambda: detector.detector_folder(options["detector"]), "GenEval detector", used_by,
                      f"`huggingface-cli download {options['detector']}`, or "
                      f"{env_variable('metrics', name, 'detector')}=/path/to/a/saved/model")
        needs += _try(lambda: colors.check_weights(options["clip_model"], options.get("clip_pretrained")),
                      "GenEval colour CLIP", used_by, "the open_clip ViT-L-14 'openai' weights in the cache, or "
                      f"{env_variable('metrics', name, 'clip_pretrained')}=/path/to/checkpoint")
    elif name == "vbench":
        from eval import weights

        if not Path(options["full_info"]).is_file():
            needs.append(Need(f"VBench prompt dimensions {options['full_info']}: no such file", used_by,
                              _env_fix(env_variable("metrics", name, "full_info"), _PROMPT_FIX["vbench"])))
        for key, what in (("dino", "DINO ViT-B/16 (subject consistency)"), ("clip", "CLIP ViT-B/32 (background "
                                                                                  "consistency)")):
            if not _hf_available(options[key]):
                needs.append(Need(f"VBench {what} '{options[key]}': {_not_found(options[key])}", used_by,
                                  _env_fix(env_variable("metrics", name, key), f"`huggingface-cli download {options[key]}`")))
        needs += _try(lambda: weights.raft_checkpoint(options["raft"]), "VBench RAFT (dynamic degree)", used_by,
                      "torchvision's Raft_Large_Weights.C_T_V1 in torch hub's checkpoints folder, or "
                      f"{env_variable('metrics', name, 'raft')}=/path/to/raft_large.pth")
    return needs


def _try(check, what: str, used_by: str, fix: str) -> list[Need]:
    try:
        check()
    except (FileNotFoundError, ValueError) as e:
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


def _env_fix(variable: str | None, source: str) -> str:
    """`source` (a command or what to point at), and the variable that points at a local copy."""
    if source.startswith("`"):
        return f"{source}, or {variable}=/path/to/a/local/copy" if variable else source
    return f"{variable}=<{source}>" if variable else source
