"""The results browser's cached reads of run folders: each keyed on the files' modification times,
so a page shows what is on disk now and reads nothing twice."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ablations.registries import CONF_DIR
from eval import verdicts
from reports import paper, progress, results

METRIC_REGISTRY = CONF_DIR / "metrics.yaml"  # an evaluator's `higher_is_better`, where it records one


# ---------------------------------------------------------------- cached loading


@st.cache_data(show_spinner="Loading runs ...", max_entries=64)
def cached_grid(path: str, stamp: tuple) -> results.GridData:
    return results.load_grid(path)


def load_grid(grid_dir: Path) -> results.GridData:
    """A grid from the page's cache, read again when a cell read as running has lost its process
    since (nothing in the folder changes when a process dies, so the file stamp alone would not tell)."""
    stamp = results.grid_stamp(grid_dir)
    grid = cached_grid(str(grid_dir), stamp)
    ended = results.ended_since_read(grid)
    return cached_grid(str(grid_dir), (*stamp, ended)) if ended else grid


@st.cache_data(show_spinner=False, max_entries=256)
def cached_train_log(cell_dir: str, mtime: float) -> pd.DataFrame:
    return results.train_log(cell_dir)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_samples(cell_dir: str, prompt_set: str, stamp: tuple) -> pd.DataFrame:
    return results.samples_with_scores(cell_dir, prompt_set)


@st.cache_data(show_spinner="Reading the cells' scores ...", max_entries=32)
def cached_scores(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...]) -> pd.DataFrame:
    return verdicts.read_scores(grid_dir, cell_ids=list(cell_ids))


@st.cache_data(show_spinner="Computing verdicts ...", max_entries=64)
def cached_verdicts(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...], metrics: tuple[str, ...],
                    control: str | None, pairs: str, correction: str, level: float) -> pd.DataFrame:
    scores = cached_scores(grid_dir, stamp, cell_ids)
    table = verdicts.compare(scores[scores["metric"].isin(metrics)], control=control, pairs=pairs,
                             order=verdicts.grid_layout(grid_dir)["order"], higher_is_better=metric_directions(),
                             correction=correction, level=level)
    table.attrs["grid"] = Path(grid_dir).name
    return table


@st.cache_data(show_spinner="Computing verdicts ...", max_entries=64)
def cached_paper_verdicts(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...], metrics: tuple[str, ...],
                          family: str, correction: str, level: float) -> pd.DataFrame:
    scores = cached_scores(grid_dir, stamp, cell_ids)
    return paper.paper_verdicts(scores[scores["metric"].isin(metrics)], family, Path(grid_dir).name,
                                verdicts.grid_layout(grid_dir)["order"], correction=correction, level=level)


def metric_directions() -> dict[str, bool]:
    """Which way each metric is better: the evaluator registry's `higher_is_better` entries over
    eval.verdicts' defaults (FID, KID lower; the judges and CLIP score higher)."""
    return verdicts.directions_from_registry(METRIC_REGISTRY)


def scores_stamp(grid_dir: str | Path, cell_ids) -> tuple:
    """Changes whenever a cell's evaluator output does (written by rename: its eval folder's mtime)."""
    grid_dir = Path(grid_dir)
    return (results.grid_stamp(grid_dir), *(_mtime(grid_dir / c / "eval") for c in cell_ids))


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def load_train_log(cell_dir: str) -> pd.DataFrame:
    return cached_train_log(cell_dir, _mtime(Path(cell_dir) / "train_log.jsonl"))


def load_samples(cell_dir: str, prompt_set: str) -> pd.DataFrame:
    folder = Path(cell_dir)
    stamp = (_mtime(folder / "samples" / prompt_set / "samples.jsonl"), _mtime(folder / "eval"),
             *(_mtime(p) for p in sorted((folder / "eval").glob("*.json"))))
    return cached_samples(cell_dir, prompt_set, stamp)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_validation(cell_dir: str, mtime: float) -> list[dict]:
    return progress.read_validation(cell_dir)


def load_validation(cell_dir: str) -> list[dict]:
    """The cell's validation.jsonl rows (evaluation during training), read again when the file changes."""
    return cached_validation(cell_dir, _mtime(Path(cell_dir) / progress.VALIDATION_FILE))
