"""The dry run's estimate comes from step costs measured on this machine (ablations.measure), cached
per machine and code version; the stored file is read only with measure=false."""
from __future__ import annotations

import pytest

from ablations import costs, measure
from ablations.grid import plan
from ablations.launch import main
from gentron.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTRON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(measure.MEASURE_ENV, "1")
    return tmp_path / "cache"


def fake_cell_costs(monkeypatch, train_s: float, sample_s: float, train_fixed: float = 0.0,
                    sample_fixed: float = 0.0) -> list[str]:
    """time_cell returning given costs; returns the list of cells it was asked to time."""
    timed = []

    def time_cell(cell, work):
        timed.append(cell.cell_id)
        return {"train": {costs.train_cost_key(cell): train_s}, "sample": {costs.sample_cost_key(cell): sample_s},
                "fixed": {f"train/{costs.train_cost_key(cell)}": train_fixed,
                          f"sample/{costs.sample_cost_key(cell)}": sample_fixed}}

    monkeypatch.setattr(measure, "time_cell", time_cell)
    monkeypatch.setattr(measure, "time_data", lambda data, items: 0.0)
    return timed


def test_the_estimate_is_computed_from_the_measured_steps_not_the_stored_file(cache, tmp_path, monkeypatch):
    p = plan(["grid=conditioning", f"runs_dir={tmp_path / 'runs'}"])
    stored = costs.estimate(p, costs.load_costs())["total_s"]
    monkeypatch.setattr(costs, "load_costs", lambda *a: pytest.fail("the stored step costs were read"))
    fake_cell_costs(monkeypatch, train_s=0.1, sample_s=0.0)
    first = costs.estimate(p, measure.plan_costs(p, tmp_path / "a.yaml"), workers=1)["total_s"]
    fake_cell_costs(monkeypatch, train_s=0.3, sample_s=0.0)
    tripled = costs.estimate(p, measure.plan_costs(p, tmp_path / "b.yaml"), workers=1)["total_s"]
    steps = sum(cell.config.train.steps for cell in p.cells)  # two models, one after the other
    assert first == pytest.approx(0.1 * steps) and tripled == pytest.approx(3 * first)
    assert first != pytest.approx(stored)


def test_the_estimate_counts_what_a_run_and_a_sampling_pass_cost_whatever_their_length(cache, tmp_path,
                                                                                      monkeypatch):
    p = plan(["grid=conditioning", f"runs_dir={tmp_path / 'runs'}"])
    fake_cell_costs(monkeypatch, train_s=0.1, sample_s=0.0)
    plain = costs.estimate(p, measure.plan_costs(p, tmp_path / "a.yaml"), workers=1)["total_s"]
    fake_cell_costs(monkeypatch, train_s=0.1, sample_s=0.0, train_fixed=30.0, sample_fixed=5.0)
    table = measure.plan_costs(p, tmp_path / "b.yaml")
    sets = sum(len(c.config.sample.prompt_sets) for c in p.cells)  # one sampling pass per prompt set
    assert sets == 4 and costs.estimate(p, table, workers=1)["total_s"] == pytest.approx(plain + 2 * 30.0 + sets * 5.0)
    assert measure.plan_costs(p, tmp_path / "b.yaml")["fixed"] == table["fixed"]  # cached with the rest


def test_cells_that_share_a_model_but_sample_differently_each_get_their_sampling_measured(cache, tmp_path,
                                                                                          monkeypatch):
    p = plan(["grid=mfg", f"runs_dir={tmp_path / 'runs'}"])
    timed = fake_cell_costs(monkeypatch, train_s=0.1, sample_s=0.5)
    table = measure.plan_costs(p)
    sample_keys = {costs.sample_cost_key(c) for c in p.cells}
    assert len(sample_keys) == 2 and set(table["sample"]) == sample_keys  # CFG alone, and CFG with MFG
    assert len(timed) == 2
    assert costs.estimate(p, table)["missing"] == []


def test_measured_costs_are_cached_per_machine_and_code_version(cache, tmp_path, monkeypatch):
    p = plan(["grid=conditioning", f"runs_dir={tmp_path / 'runs'}"])
    timed = fake_cell_costs(monkeypatch, train_s=0.2, sample_s=0.05)
    load = [3.0]
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    table = measure.plan_costs(p)
    assert sorted(timed) == sorted(c.cell_id for c in p.cells)
    assert table["source"] == str(measure.cache_path()) and measure.cache_path().is_file()
    assert str(measure.cache_path()).startswith(str(cache))
    assert measure.plan_costs(p)["train"] == table["train"] and len(timed) == 2  # read back, nothing timed
    load[0] = 3.5  # about as busy: the cache holds
    assert measure.plan_costs(p)["load_average"] == 3.0 and len(timed) == 2
    load[0] = 0.5  # the machine is idler than when it measured (thread times were inflated): measured again
    assert measure.plan_costs(p)["load_average"] == 0.5 and len(timed) == 4
    monkeypatch.setattr(measure, "code_version", lambda: "0123456789ab")  # the code changed: measured again
    measure.plan_costs(p)
    assert len(timed) == 6
    other = measure.cache_path(measure.Machine("Another CPU", 64), "0123456789ab")
    assert other != measure.cache_path() and other.parent == measure.cache_path().parent


def test_the_dry_run_says_where_its_estimate_comes_from_and_what_the_load_does(cache, tmp_path, monkeypatch,
                                                                              capsys):
    fake_cell_costs(monkeypatch, train_s=0.1, sample_s=0.0)
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    monkeypatch.setattr(measure, "core_share", lambda: 0.5)  # a busy thread gets half a core: 3 others on 2 cores
    monkeypatch.setattr(measure, "this_machine", lambda: measure.Machine("Test CPU 9000", 2))
    argv = ["grid=conditioning", "dry_run=true", "local.workers=2", f"runs_dir={tmp_path / 'runs'}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "measured here on Test CPU 9000, 2 cores, load 4.0 (a busy thread gets 0.50 of a core now)" in out
    idle = 7000 * 0.1 / 60  # the two models side by side on two workers: one model's time
    assert f"estimated time on 2 cores of this machine: {idle * 2.5:.1f} min at the current load" in out
    assert f"each cell runs 2.5x slower than on an idle machine ({idle:.1f} min)" in out
    assert "from step costs measured on" not in out  # the stored file's line


def test_measure_false_reads_the_stored_file_and_bad_values_are_refused(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(measure, "time_cell", lambda *a: pytest.fail("measured with measure=false"))
    assert main(["grid=conditioning", "dry_run=true", "measure=false", f"runs_dir={tmp_path / 'runs'}"]) == 0
    assert "from step costs measured on" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="measure"):
        plan(["grid=conditioning", "measure=sometimes"])


def test_what_the_load_does_to_the_estimate():
    assert measure.load_factor(workers=2, cores=2, others=0.0) == 1.0
    assert measure.load_factor(workers=1, cores=4, others=2.0) == 1.0  # spare cores: no slower
    assert measure.load_factor(workers=2, cores=2, others=2.0) == 2.0
    assert measure.load_factor(workers=8, cores=2, others=0.0) == 1.0  # the runner's own cells: in the estimate
    assert measure.competing(cores=2, load=8.0, share=0.5) == 3.0  # half a core: three others beside it
    assert measure.competing(cores=2, load=8.0, share=1.0) == 1.0  # a whole core: the host's load is not ours
    assert measure.competing(cores=4, load=0.3, share=1.0) == 0.3


@pytest.mark.slow
def test_a_real_measurement_runs_the_trainer_and_sampler(cache, tmp_path):
    """One cell timed for real (gentron.train, gentron.generate), with its trained text encoder stood
    in for by an untrained one of its recipe."""
    p = plan(["grid=text_encoder", "seeds=[0]", f"runs_dir={tmp_path / 'runs'}"])
    cell = next(c for c in p.cells if c.arms["text_encoder"] == "clip")
    found = measure.time_cell(cell, tmp_path / "work")
    assert list(found["train"]) == [costs.train_cost_key(cell)] and list(found["sample"]) == [costs.sample_cost_key(cell)]
    assert 0 < found["train"][costs.train_cost_key(cell)] < 5 and 0 < found["sample"][costs.sample_cost_key(cell)] < 5
    # building the model, data and checkpoints: more than nothing, less than a minute at this size
    assert set(found["fixed"]) == {f"train/{costs.train_cost_key(cell)}", f"sample/{costs.sample_cost_key(cell)}"}
    assert all(0 < v < 60 for v in found["fixed"].values())
    (run,) = (tmp_path / "work").glob(f"train-{cell.cell_id}-????????")
    assert (run / "train_log.jsonl").read_text().count("\n") == measure.WARMUP_STEPS + measure.TIMED_STEPS
    assert not (tmp_path / "runs").exists()  # nothing written to the runs folder
