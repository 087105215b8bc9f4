"""Grid composition, expansion, cell ids, the override grammar and its errors (no training)."""
import re

import pytest

from ablations.grid import available_grids, parse_args, plan
from ablations.identity import cell_id
from ablations.launch import main
from gentron.config import CellConfig
from gentron.errors import ConfigError


def test_shipped_grids_expand_with_distinct_stable_ids():
    assert {"conditioning", "text_encoder", "scale", "mfg"} <= set(available_grids())
    for name in ("conditioning", "text_encoder", "scale", "mfg"):
        first, again = plan([f"grid={name}", "seeds=[0,1,2]"]), plan([f"grid={name}", "seeds=[0,1,2]"])
        ids = [c.cell_id for c in first.cells]
        assert ids == [c.cell_id for c in again.cells]
        assert len(set(ids)) == len(ids) and all(len(i) == 10 for i in ids)
        assert {c.axes["seed"] for c in first.cells} == {0, 1, 2}
    assert {c.axes["seed"] for c in plan(["grid=conditioning"]).cells} == {0}  # the 15-minute default


def test_cell_id_ignores_run_only_keys_and_tracks_the_rest():
    base = plan(["grid=conditioning", "seeds=[0]"]).cells[0]
    logged = plan(["grid=conditioning", "seeds=[0]", "train.log_every=1", "sample.batch_size=3"]).cells[0]
    longer = plan(["grid=conditioning", "seeds=[0]", "train.steps=7"]).cells[0]
    assert logged.cell_id == base.cell_id == cell_id(base.config)
    assert longer.cell_id != base.cell_id and longer.config.train.steps == 7


def test_cell_id_changes_with_the_cell_version(monkeypatch):
    """Code that computes something else for the same config bumps CELL_VERSION: old cells are not reused."""
    import ablations.identity as identity

    config = plan(["grid=conditioning", "seeds=[0]"]).cells[0].config
    before = cell_id(config)
    monkeypatch.setattr(identity, "CELL_VERSION", identity.CELL_VERSION + 1)
    assert cell_id(config) != before


def test_the_issue_command_line_parses():
    run, cell = parse_args(["grid=conditioning", "seeds=[0,1,2]", "train.steps=500", "launcher=slurm", "slurm=local"])
    assert (run.grid, list(run.seeds), run.launcher, run.slurm) == ("conditioning", [0, 1, 2], "slurm", "local")
    assert cell == {"train.steps": 500}
    p = plan(["grid=conditioning", "seeds=[0,1,2]", "train.steps=500", "launcher=slurm", "slurm=local"])
    assert all(isinstance(c.config, CellConfig) for c in p.cells)
    assert len(p.cells) == 6 and {c.config.train.steps for c in p.cells} == {500}
    assert {c.config.model.conditioning for c in p.cells} == {"adaln", "cross_attn"}


def test_profiles_map_arms_and_label_them():
    embedded = plan(["grid=scale", "seeds=[0]"]).cells
    assert [c.arms["scale"] for c in embedded] == ["XL/2", "G/2"]
    assert all("embedded" in c.axes["scale"] for c in embedded)
    paper = plan(["grid=scale", "seeds=[0]", "profile=paper", "data.path=/shards"]).cells
    assert [c.config.model.size for c in paper] == ["XL/2", "G/2"]
    tiny = plan(["grid=text_encoder", "seeds=[0]"]).cells
    # the embedded arms load the tiny encoders trained on CompShapes as real weights load (gentron.text.pretrain)
    assert [[e.kind for e in c.config.text_encoders] for c in tiny] == [["clip"], ["t5"], ["clip", "t5"]]
    real = plan(["grid=text_encoder", "seeds=[0]", "profile=paper", "data.path=/shards"]).cells
    assert [c.axes["text_encoder"] for c in real] == ["CLIP-L", "T5-XXL", "CLIP-T5XXL"]
    assert real[1].config.text_encoders[0].path == "google/flan-t5-xxl"


def test_mfg_sweeps_lambda_m_at_lambda_t_7_5():
    cells = plan(["grid=mfg", "seeds=[0]"]).cells
    assert [c.config.sample.mfg_scale for c in cells] == [None, 1.0, 1.1, 1.2, 1.3]
    assert {c.config.sample.cfg_scale for c in cells} == {7.5}


@pytest.mark.parametrize("argv, message", [
    (["grid=conditionning"], "did you mean 'conditioning'"),
    (["grid=nope"], "grids: conditioning, mfg, scale, text_encoder"),
    (["train.stepz=3"], "did you mean 'train.steps'"),
    (["seedz=[0]"], "did you mean 'seeds'"),
    (["local.workerz=2"], "did you mean 'local.workers'"),
    (["train.steps=abc"], "train.steps='abc' must be of type int"),
    (["model.conditioning=film"], "model.conditioning is set by the grid's axis 'conditioning'"),
    (["grid=scale", "model.size=Q/2"], "is not a known size"),
    (["launcher=kubernetes"], "choose one of ['local', 'slurm']"),
    (["launcher=slurm"], "needs slurm=<profile>"),
    (["dry_run=maybe"], "dry_run"),
    (["train.steps=1,2"], "is a sweep"),
    (["profile=huge"], "profiles: embedded, paper"),
    (["sample.prompt_sets=[nope]"], "unknown prompt set 'nope'"),
    (["eval.metrics=[fdi]"], "did you mean 'fid'"),
    (["grid=scale", "profile=paper"], "data.path has no value"),
])
def test_bad_input_fails_before_anything_runs(argv, message, tmp_path, capsys):
    assert main([*argv, f"runs_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["grid=conditioning", "seeds=[0,1,2]", "dry_run=true", f"runs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " adaln " in line or " cross_attn " in line]
    assert len(rows) == 6 and all("pending" in r for r in rows)
    for cell in plan(["grid=conditioning"]).cells:
        assert cell.cell_id in out
    assert "train" in out and "record" in out and not any(tmp_path.iterdir())


def test_paper_sizes_are_refused_on_a_cpu(tmp_path, capsys):
    assert main(["grid=scale", "profile=paper", "data.path=/shards", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "refusing to train" in err and "launcher=slurm" in err and "GB" in err
    assert not any(tmp_path.iterdir())


def test_the_refusal_counts_parameters_exactly():
    """The CPU refusal counts the cell's own model exactly (gentron.sizes; XL/2 adaLN with CLIP-L: DiT-XL/2's
    blocks), the model gentron.config.resolve derives from the cell."""
    from ablations import costs

    p = plan(["grid=conditioning", "profile=paper", "data.path=/shards"])
    adaln = next(c for c in p.cells if c.arms["conditioning"] == "adaln")
    assert costs.counts(adaln).params == 674_567_456
    assert costs.too_big_for_cpu(p) == {"XL/2": costs.counts(p.cells[1]).params}


def test_trained_encoders_are_counted_at_their_recipes_width():
    """A text encoder the grid trains itself has no folder at plan time: its recipe gives its shape
    (a 64-wide tower), not CLIP-L's 768 that a missing folder would fall back to."""
    from gentron import sizes
    from gentron.config import resolve

    cells = {c.arms["text_encoder"]: c for c in plan(["grid=text_encoder"]).cells}
    for cell in cells.values():
        assert all(s.width == 64 and s.pooled_width == 64 for s in cell.shapes())
    assert [s.tokens for s in cells["clip+t5"].shapes()] == [32, 64]  # CLIP context_length, T5 max_length
    model = cells["clip"].model()
    assert model.text_widths == (64,) and model == resolve(cells["clip"].config, cells["clip"].shapes())
    from ablations import costs

    assert costs.counts(cells["clip"]).params == sizes.count_params(model)["total"]


# Typos in any nested option of a cell, a grid file or a grid's macros fail at plan time, in one line
# that names the key.
@pytest.mark.parametrize("argv, key", [
    (["text_encoders=[{kind:tiny_clip,sed:0}]"], "text_encoders[0].sed"),
    (["grid=text_encoder", "encoders.clip.stpes=3"], "encoders.clip.stpes"),
    (["grid=text_encoder", "encoders.bert.steps=3"], "encoders.bert.steps"),
])
def test_a_typo_in_a_nested_option_fails_at_plan_time(argv, key, tmp_path):
    with pytest.raises(ConfigError) as error:
        plan([*argv, f"runs_dir={tmp_path}"])
    message = str(error.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize("text, key, hint", [
    ("base: {text_encoders: [{trained: clip, extra: 1}]}", "text_encoders[0].extra", "trained"),
    ("base: {train.init_from: {grid: conditioning, arm: {conditioning: adaln}}}", "train.init_from.arm",
     "did you mean 'train.init_from.arms'"),
    ("base: {train.init_from: {arms: {conditioning: adaln}}}", "train.init_from.grid is required", ""),
    ("evaluation: {metric: [compshapes_judge]}", "evaluation.metric", "did you mean 'evaluation.metrics'"),
    ("profiles: {embedded: {bse: {}}}", "profiles.embedded.bse", "did you mean 'profiles.embedded.base'"),
    ("sedes: [0]", "sedes", "did you mean 'seeds'"),
])
def test_a_typo_in_a_grid_file_fails_at_plan_time(text, key, hint, tmp_path, monkeypatch):
    import ablations.grid as grid

    grids = tmp_path / "grids"
    grids.mkdir()
    for name in ("conditioning",):
        (grids / f"{name}.yaml").write_text((grid.GRIDS_DIR / f"{name}.yaml").read_text())
    profiles = "" if text.startswith("profiles:") else "profiles: {embedded: {}}\n"
    (grids / "typo.yaml").write_text("encoders: {clip: {objective: clip_contrastive}}\n"
                                     "axes: {conditioning: {adaln: {model.conditioning: adaln}}}\n"
                                     + profiles + text + "\n")
    monkeypatch.setattr(grid, "GRIDS_DIR", grids)
    with pytest.raises(ConfigError) as error:
        plan(["grid=typo", f"runs_dir={tmp_path}"])
    message = str(error.value)
    assert key in message and hint in message and "\n" not in message


def test_the_closing_hints_name_the_runs_folder_and_reproduce_the_cells(tmp_path, capsys):
    """The browse hint points at the runs folder used; the resume hint is a command that plans exactly
    the cells shown (grid, profile, seeds, overrides, runs folder) again."""
    import shlex

    from ablations.launch import finish

    runs = tmp_path / "my runs"
    argv = ["grid=conditioning", "seeds=[3,4]", "train.steps=7", "sample.prompt_sets=[compshapes_smoke]",
            f"runs_dir={runs}"]
    p = plan(argv)
    p.grid_dir.mkdir(parents=True)
    assert finish(p, failed=[str(p.grid_dir / p.cells[0].cell_id)]) == 1
    captured = capsys.readouterr()
    browse = next(line for line in captured.out.splitlines() if line.startswith("browse: "))
    assert shlex.split(browse.removeprefix("browse: ")) == ["streamlit", "run", "reports/app.py", "--", "--runs",
                                                            str(runs)]
    hint = captured.err.split("resume them with: ", 1)[1].strip()
    words = shlex.split(hint)
    assert words[:2] == ["python", "ablations/run.py"]
    again = plan(words[2:])
    assert [c.cell_id for c in again.cells] == [c.cell_id for c in p.cells] and again.grid_dir == p.grid_dir


def test_help_lists_the_run_options_and_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python ablations/run.py")
    for key in ("grid=conditioning", "profile=embedded", "local.workers=", "dry_run=false", "runs_dir=runs",
                "train.steps=7000", "mfg", "scale"):
        assert key in out, key


def test_the_plan_says_stopped_for_a_stage_whose_process_is_gone(tmp_path):
    """A run killed mid-training leaves `running` in its manifest; the dry run's table checks the
    process the way the results browser does (ablations.runfolder.cell_status) and says `stopped`."""
    import json
    import socket
    import subprocess
    import sys

    from ablations import manifest as manifest_mod
    from ablations.launch import plan_table

    p = plan(["grid=conditioning", f"runs_dir={tmp_path}"])
    cell_dir = p.grid_dir / p.cells[0].cell_id
    cell_dir.mkdir(parents=True)
    (cell_dir / "config.yaml").write_text("{}\n")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    entry = {"status": "running", "start": "2026-01-01T00:00:00+00:00", "host": socket.gethostname(),
             "pid": child.pid}
    (cell_dir / manifest_mod.MANIFEST).write_text(json.dumps({"status": "running", "stages": {"train": entry}}))
    row = plan_table(p).set_index("cell").loc[p.cells[0].cell_id]
    assert row["train"] == "stopped" and row["sample"] == "pending"


def test_the_runner_writes_a_cells_config_once_and_the_stages_read_it_back(tmp_path):
    """config.yaml is written when the cell is planned into its folder and not again while it is the
    same; the stages read back the CellConfig the plan made."""
    from ablations import stages
    from ablations.launch import prepare

    p = plan(["grid=conditioning", f"runs_dir={tmp_path}"])
    prepare(p)
    path = p.grid_dir / p.cells[0].cell_id / "config.yaml"
    before = path.stat().st_mtime_ns
    prepare(p)
    assert path.stat().st_mtime_ns == before
    _, config, info = stages.load(path.parent)
    assert config == p.cells[0].config and info["cell_id"] == p.cells[0].cell_id


def test_the_rerun_command_keeps_encoder_recipe_overrides(tmp_path):
    """encoders.<name>.<key> changes the cells (another encoder folder): the plan's arguments keep it."""
    p = plan(["grid=text_encoder", "encoders.clip.steps=10", "local.workers=1", f"runs_dir={tmp_path}"])
    assert p.args == ["grid=text_encoder", "profile=embedded", "encoders.clip.steps=10"]
    assert [c.cell_id for c in plan([*p.args, f"runs_dir={tmp_path}"]).cells] == [c.cell_id for c in p.cells]


def test_a_grid_file_named_by_its_path_runs_under_runs_dir(tmp_path, monkeypatch, capsys):
    """grid=<path ending in .yaml> runs a grid file kept outside ablations/grids; its runs still go to
    <runs_dir>/<its stem>/, and the plan's arguments name the file by its absolute path (the rerun hint
    works from any folder)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "my_grid.yaml").write_text("description: mine\naxes:\n  conditioning:\n"
                                            "    adaln: {model.conditioning: adaln}\nprofiles:\n  embedded: {}\n")
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    for given in (str(elsewhere / "my_grid.yaml"), "elsewhere/my_grid.yaml"):
        p = plan([f"grid={given}", f"runs_dir={runs}"])
        assert p.grid_dir == runs / "my_grid" and [c.axes for c in p.cells] == [{"conditioning": "adaln", "seed": 0}]
        assert p.args[0] == f"grid={elsewhere / 'my_grid.yaml'}"
        assert p.cells[0].grid == "my_grid"
    assert main([f"grid={elsewhere / 'my_grid.yaml'}", "dry_run=true", f"runs_dir={runs}"]) == 0
    assert f"1 cells in {runs / 'my_grid'}" in capsys.readouterr().out and not runs.exists()


@pytest.mark.parametrize("grid", ["../../../tmp/x/evil", "/etc/passwd", "a/b", "..", ".x", "a\\b"])
def test_a_grid_name_cannot_lead_outside_runs_dir(grid, tmp_path):
    with pytest.raises(ConfigError, match="is not a grid name"):
        plan([f"grid={grid}", f"runs_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_the_paper_dry_run_lists_what_is_missing_and_exits_zero(tmp_path, capsys):
    """Missing weights, data and prompt files are what a dry run is for: it lists them (preflight) and
    exits 0; the CPU time estimate skips cells that need GPUs and counts a missing prompt set at its paper size."""
    argv = ["grid=conditioning", "profile=paper", "dry_run=true", "data.path=/tmp/nodata", f"runs_dir={tmp_path}"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err and "preflight:" in captured.out
    assert "prompt set 't2i_compbench_val': no file matches" in captured.out
    assert "not estimated: every cell is beyond 100M parameters and needs GPUs" in captured.out
    minutes = {}
    for sets in ("compshapes_smoke", "compshapes_smoke,coco30k"):
        assert main(["grid=conditioning", "dry_run=true", f"sample.prompt_sets=[{sets}]", f"runs_dir={tmp_path}"]) == 0
        out = capsys.readouterr().out
        minutes[sets] = float(re.search(r"estimated time on [0-9]+ cores? of this machine: ([0-9.]+) min", out).group(1))
    # a prompt set whose file is absent counts at its paper size (30,000 COCO captions, one image each)
    assert "prompt set 'coco30k': no file matches" in out
    assert minutes["compshapes_smoke,coco30k"] > 2 * minutes["compshapes_smoke"]
    assert not any(tmp_path.iterdir())


def test_the_dry_run_lists_the_weights_of_geneval_vbench_and_the_metrics_scored_while_training(tmp_path, capsys,
                                                                                                monkeypatch):
    for variable in ("GENTRON_GENEVAL_DETECTOR", "GENTRON_DINO_VITB16", "GENTRON_RAFT", "VBENCH_ROOT",
                     "GENEVAL_PROMPTS", "COCO30K_CAPTIONS", "COCO_FID_REF"):
        monkeypatch.setenv(variable, str(tmp_path / "absent" / variable.lower()))
    assert main(["grid=mfg", "profile=paper", "dry_run=true", "data.path=/tmp/nodata", "train.init_from=/tmp/t2i.pt",
                 f"runs_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "VBench prompt dimensions" in out and "VBench DINO ViT-B/16 (subject consistency)" in out
    assert "VBench RAFT (dynamic degree)" in out and "GENTRON_RAFT=" in out
    assert main(["grid=conditioning", "profile=paper", "dry_run=true", "data.path=/tmp/nodata",
                 "sample.prompt_sets=[geneval]", "eval.metrics=[geneval]", "train.eval_every=1000",
                 "train.eval_prompt_set=coco1k", "train.eval_metrics=[fid]", f"runs_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "GenEval metadata" in out and "GenEval detector" in out
    assert "prompt set 'coco1k': no file matches" in out and "train.eval_prompt_set" in out
    assert "FID reference" in out and "metric fid" in out
    assert not (tmp_path / "runs").exists()


def test_a_grid_folder_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "conditioning").write_text("not a folder")
    assert main(["grid=conditioning", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"the grid's runs folder {tmp_path / 'conditioning'} is a file, not a folder" in err
    assert "Errno" not in err and "Traceback" not in err


def test_registry_entries_are_validated_by_the_schema(tmp_path, monkeypatch):
    """A typo in a prompt set or metric entry of ablations/conf is one line naming the file, the entry
    and the key, when the registry is first read."""
    import shutil

    from ablations import registries
    from gentron.errors import ConfigError

    for name in ("prompt_sets", "metrics"):
        shutil.copy(registries.CONF_DIR / f"{name}.yaml", tmp_path / f"{name}.yaml")
    with open(tmp_path / "metrics.yaml", "a", encoding="utf-8") as f:
        f.write("typo_metric:\n  modul: eval.judge\n  prompt_sets: [x]\n")
    with open(tmp_path / "prompt_sets.yaml", "a", encoding="utf-8") as f:
        f.write("no_glob:\n  kind: files\n")
    monkeypatch.setattr(registries, "CONF_DIR", tmp_path)
    registries._loaded.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"metrics\.yaml: typo_metric: unknown config key 'modul'; did you mean 'module'"):
            registries.registry("metrics")
        with pytest.raises(ConfigError, match=r"prompt_sets\.yaml: no_glob: kind files needs `glob`"):
            registries.registry("prompt_sets")
    finally:
        registries._loaded.cache_clear()
