"""The configured data set: the one place that tells CompShapes from real data (`data.kind`).

A cell trains on images and, for video (`data.video`), on clips as well: CompShapes draws both (its
motion categories as clips); a video folder holds only clips. Each is a data set that the trainer
reads once in order to encode it (`data.encode: memory`), or a source that loader workers stream
(gentron.data.stream: `per_batch`, and the encode stage that writes feature shards).
"""
from __future__ import annotations

import torch

from gentron.config import CellConfig, to_dict
from gentron.data import compshapes
from gentron.data.real import build_real_dataset
from gentron.data.stream import IndexedSource


def open_dataset(cfg: CellConfig, video: bool):
    """CompShapes' images, or its clips when `video`; otherwise the data.kind reader of data.path
    (gentron.data.real), which yields what its files hold."""
    if cfg.data.kind == "compshapes":
        return compshapes.from_config({**to_dict(cfg)["data"], "video": video})
    return build_real_dataset(cfg.data)


def open_datasets(cfg: CellConfig) -> dict:
    """{"images": data set, "clips": data set} of a cell: no "clips" for an image cell, no "images"
    for a video folder."""
    datasets = {}
    if cfg.data.kind != "video_folder":
        datasets["images"] = open_dataset(cfg, video=False)
    if cfg.data.video:
        datasets["clips"] = open_dataset(cfg, video=True)
    return datasets


def as_source(dataset):
    """A data set as a streaming source: a map-style one (CompShapes) by ranges of indices; the
    real-data readers are sources already."""
    return dataset if isinstance(dataset, torch.utils.data.IterableDataset) else IndexedSource(dataset)
