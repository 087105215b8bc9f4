"""Finding evaluator weights without a network: local paths first, then the usual caches (HF_HOME,
open_clip's cache, clean-fid's /tmp, torch hub). Every miss raises FileNotFoundError naming the exact
file or model and the command that fetches it on a machine with internet access."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# clean-fid's Inception (modes "clean" and "legacy_tensorflow"): a TorchScript file it expects in /tmp.
CLEANFID_INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# pytorch-fid's port (mode "legacy_pytorch"; also what torchmetrics' feature_extractor_weights_path takes).
PT_INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
# The official T2I-CompBench models, by their Hugging Face names.
BLIP_VQA = "Salesforce/blip-vqa-capfilt-large"
CLIP_B32 = "openai/clip-vit-base-patch32"
OWLVIT = "google/owlvit-base-patch32"


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub searches (HF_HUB_CACHE / HF_HOME as it read them)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_model_path(name_or_path: str | os.PathLike, what: str) -> Path:
    """A local folder for a transformers model: the path itself, or the cached snapshot of a hub name."""
    if not str(name_or_path).strip():  # Path("") is the current folder
        raise ValueError(f"{what}: the name is empty; give the folder of a saved model or a cached hub name")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{what}: {path} is a file; pass the folder written by save_pretrained")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as e:  # huggingface_hub raises several types for "not in the cache"
        raise FileNotFoundError(
            f"{what}: '{name_or_path}' is neither a local folder nor cached in {hf_cache_dir()} ({type(e).__name__}). "
            f"On a machine with internet run `huggingface-cli download {name_or_path}` and copy its "
            f"$HF_HOME/hub folder here (or set HF_HOME to it), or pass the folder of a saved model."
        ) from e


def open_clip_checkpoint(model: str, pretrained: str | None) -> str | None:
    """What to give open_clip's `pretrained=`: None (random init), a local checkpoint file, or a tag
    whose file is already in open_clip's cache (checked here so offline use fails clearly)."""
    if pretrained is not None and not str(pretrained).strip():  # Path("") is the current folder
        raise ValueError(f"open_clip weights for '{model}': the pretrained tag is empty; give a tag such as openai "
                         f"or a checkpoint file")
    if pretrained is None or Path(pretrained).expanduser().is_file():
        return pretrained
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag '{pretrained}' for model '{model}' and it is not a file; "
                         f"tags: {open_clip.list_pretrained_tags_by_model(model)}")
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as e:
        source = cfg.get("hf_hub") or cfg.get("url")
        raise FileNotFoundError(
            f"open_clip weights {model}/{pretrained} are not cached ({type(e).__name__}: {e}). Fetch {source} on a "
            f"machine with internet (open_clip.create_model('{model}', pretrained='{pretrained}') caches it under "
            f"{hf_cache_dir()} or ~/.cache/clip) and copy the cache here, or pass the checkpoint file as pretrained."
        ) from e


def cleanfid_inception(mode: str) -> Path:
    """The Inception weights clean-fid loads for `mode`, which must already be on disk."""
    if mode in ("clean", "legacy_tensorflow"):
        path, url = Path("/tmp") / "inception-2015-12-05.pt", CLEANFID_INCEPTION_URL
    elif mode == "legacy_pytorch":
        import torch

        path, url = Path(torch.hub.get_dir()) / "checkpoints" / Path(PT_INCEPTION_URL).name, PT_INCEPTION_URL
    else:
        raise ValueError(f"unknown clean-fid mode '{mode}': use clean, legacy_pytorch or legacy_tensorflow")
    if not path.is_file():
        raise FileNotFoundError(
            f"clean-fid's Inception weights for mode '{mode}' are missing: expected {path}. Download {url} on a machine "
            f"with internet and copy it to {path}, or use --extractor random (not comparable to papers)."
        )
    return path


def torchmetrics_inception(weights_path: str | os.PathLike | None) -> Path:
    """torchmetrics' FrechetInceptionDistance needs torch-fidelity and, offline, the pytorch-fid weights file."""
    if weights_path is None or not Path(weights_path).is_file():
        raise FileNotFoundError(
            f"torchmetrics FID cross-check: weights file '{weights_path}' not found. Download {PT_INCEPTION_URL} and "
            f"pass it as --torchmetrics-weights (torchmetrics' feature_extractor_weights_path).")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise FileNotFoundError("torchmetrics' Inception FID needs torch-fidelity: `pip install torch-fidelity`") from e
    return Path(weights_path)


# VBench's and FVD's models (eval/vbench, eval/fvd.py).
DINO_VITB16 = "facebook/dino-vitb16"  # DINO ViT-B/16 (transformers), VBench's subject-consistency model
RAFT_C_T = "C_T_V1"  # torchvision's Raft_Large_Weights.C_T_V1: the original RAFT's raft-things weights, ported
I3D_FILE = "i3d_torchscript.pt"  # the Kinetics-400 I3D (TF-Hub port, TorchScript) that FVD implementations load
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"


def raft_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A torchvision RAFT state dict: a file, a folder holding one .pth, or a torchvision weights name
    (C_T_V1, C_T_SKHT_V2, ...) whose file is already in torch hub's checkpoints folder."""
    if not str(name_or_path).strip():
        raise ValueError("RAFT weights: the name is empty; give C_T_V1 (torchvision's raft-things weights) or a .pth file")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if len(found) != 1:
            raise FileNotFoundError(f"RAFT weights: {path} holds {len(found)} .pth files; give the file itself")
        return found[0]
    if path.is_file():
        return path
    from torchvision.models.optical_flow import Raft_Large_Weights

    if str(name_or_path) not in Raft_Large_Weights.__members__:
        raise FileNotFoundError(f"RAFT weights '{name_or_path}': no such file or folder, and not a torchvision weights "
                                f"name ({', '.join(Raft_Large_Weights.__members__)}); give a .pth state dict of "
                                f"torchvision's raft_large")
    import torch

    url = Raft_Large_Weights[str(name_or_path)].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        raise FileNotFoundError(f"RAFT weights {name_or_path} are missing: expected {cached}. Download {url} on a "
                                f"machine with internet and copy it there, or pass the file (GENTRON_RAFT=FILE).")
    return cached


def i3d_checkpoint(path: str | os.PathLike | None) -> Path:
    """The Kinetics-400 I3D TorchScript file: the path given (a file or a folder holding it), else torch hub's
    checkpoints folder."""
    import torch

    if path is not None and not str(path).strip():
        raise ValueError(f"I3D weights: the path is empty; give {I3D_FILE} or the folder holding it")
    candidate = Path(path).expanduser() if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / I3D_FILE
    if candidate.is_dir():
        candidate = candidate / I3D_FILE
    if not candidate.is_file():
        raise FileNotFoundError(f"the Kinetics-400 I3D for FVD is missing: expected {candidate}. Download {I3D_URL} on "
                                f"a machine with internet and pass it (--i3d FILE or GENTRON_I3D=FILE), or use "
                                f"--extractor random (not comparable to papers).")
    return candidate
