"""The clips of a folder and their frames, read the way VBench reads them.

A folder is either a gentron sample folder (samples.jsonl; a video sample lists its GIF as `file` and its
lossless PNG frames as `frames`, gentron.generate) or a plain folder of clips as VBench takes them: .mp4 and
.gif files and folders of frame images, named `{prompt}-{index}.mp4` (VBench's naming; the prompt is the
name without `-{index}`).

`source` picks what a clip is read from when it has both: "frames" (the default: the PNG frames, lossless,
as VBench's `read_frame` mode reads frame folders) or "video" (the encoded file, as VBench reads videos).
Frames are read as VBench's dimensions read them:
- `bgr_frames`: OpenCV (cv2.VideoCapture for a video, cv2.imread for frame images), BGR uint8 arrays:
  temporal flickering and dynamic degree;
- `rgb_video`: a (T, 3, H, W) float32 tensor of values 0..255 (as VBench's load_video returns it) (GIFs with PIL's ImageSequence, converted to RGB; MP4 with
  OpenCV, where VBench uses decord): subject and background consistency of videos;
- `frame_images`: PIL images of a frame folder in name order: subject and background consistency of frames.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.common import MANIFEST, Sample, load_samples, read_samples

VIDEO_SUFFIXES = (".mp4", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # VBench's frame-folder extensions
SOURCES = ("frames", "video")
NUMBER_ENDING = re.compile(r"-(\d+)$")


@dataclass
class Clip:
    """One clip: its sample (file, prompt, seed, ids) and where its frames are read from."""
    sample: Sample
    path: Path  # an encoded video file, or a folder of frame images
    is_folder: bool

    @property
    def kind(self) -> str:
        return "frames" if self.is_folder else self.path.suffix.lower().lstrip(".")


def folder_clips(folder: str | Path, source: str = "frames") -> list[Clip]:
    """Every clip of `folder`, in manifest (or name) order, each read from `source` where it has both."""
    if source not in SOURCES:
        raise ValueError(f"unknown clip source '{source}': use one of {SOURCES}")
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return [_manifest_clip(folder, s, source) for s in read_samples(folder)]
    clips = _plain_clips(folder)
    if not clips:
        return [_manifest_clip(folder, s, source) for s in load_samples(folder)]  # names the problem
    return clips


def _manifest_clip(folder: Path, sample: Sample, source: str) -> Clip:
    frames = folder / sample.frames if sample.frames else None
    video = folder / sample.file
    if frames is not None and frames.is_dir() and (source == "frames" or video.suffix.lower() not in VIDEO_SUFFIXES):
        return Clip(sample, frames, True)
    if video.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{video} is not a clip (.mp4 or .gif, or a frames folder in {MANIFEST}); a VBench "
                         f"dimension scores video samples: give a folder sampled from a text-to-video model")
    return Clip(sample, video, False)


def _plain_clips(folder: Path) -> list[Clip]:
    """VBench's layout: .mp4/.gif files and folders of frame images, prompts from `{prompt}-{index}` names."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of clips")
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name == "eval":
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found.append((path, False))
        elif path.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir()):
            found.append((path, True))
    ids: dict[str, int] = {}
    clips = []
    for path, is_folder in found:
        stem = path.name if is_folder else path.stem
        match = NUMBER_ENDING.search(stem)
        prompt, index = (stem[:match.start()], int(match.group(1))) if match else (stem, 0)
        sample = Sample(file=path.name, prompt=prompt, seed=index, index=index,
                        prompt_id=ids.setdefault(prompt, len(ids)))
        clips.append(Clip(sample, path, is_folder))
    return clips


def frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no frame images ({', '.join(FRAME_SUFFIXES)}); regenerate the clip")
    return files


def bgr_frames(clip: Clip) -> tuple[list[np.ndarray], float | None]:
    """The clip's frames as OpenCV reads them (BGR uint8) and the video's frame rate (None for frames)."""
    import cv2

    if clip.is_folder:
        frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in frame_files(clip.path)]
        if any(f is None for f in frames):
            raise ValueError(f"{clip.path}: OpenCV cannot read every frame image; regenerate the clip")
        return frames, None
    video = cv2.VideoCapture(str(clip.path))
    fps = video.get(cv2.CAP_PROP_FPS)
    frames = []
    while video.isOpened():
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    if not frames:
        raise ValueError(f"{clip.path}: OpenCV decodes no frame from it; regenerate or re-encode the clip")
    return frames, fps


def rgb_video(path: Path) -> torch.Tensor:
    """An encoded clip as a (T, 3, H, W) float32 tensor of RGB values 0..255 (uint8 values, as VBench's
    load_video returns them: its transforms then resize floats, without rounding to uint8)."""
    from PIL import Image, ImageSequence

    if path.suffix.lower() == ".gif":
        with Image.open(path) as image:
            frames = [np.array(frame.convert("RGB"), dtype=np.uint8) for frame in ImageSequence.Iterator(image)]
    else:
        import cv2

        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in bgr_frames(Clip(None, path, False))[0]]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()


def frame_images(folder: Path) -> list:
    """The frame images of a folder, in name order, as RGB PIL images."""
    from PIL import Image

    images = []
    for path in frame_files(folder):
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def read_full_info(path: str | Path) -> dict[str, set[str]]:
    """VBench_full_info.json as {prompt: the dimensions it serves} (a prompt listed twice serves both lists)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VBench prompt information {path} not found: give the vbench/VBench_full_info.json "
                                f"of a VBench checkout (git clone https://github.com/Vchitect/VBench), or leave it out "
                                f"to score every clip on every dimension")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        dims: dict[str, set[str]] = {}
        for entry in entries:
            dims.setdefault(entry["prompt_en"], set()).update(entry["dimension"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not VBench's prompt information (a JSON list of {{prompt_en, dimension}}): "
                         f"{type(e).__name__}: {e}") from e
    return dims
