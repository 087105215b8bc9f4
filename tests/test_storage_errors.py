"""Writes the disk refuses end in one line naming the path, the problem and the fix (gentron.io's
StorageError), never an errno, a traceback or torch's `[enforce fail at inline_container.cc]`, and
leave no temporary file behind; the grid runner stops at the first one instead of failing cell after
cell. This machine's tests run as root, which ignores permissions: read-only folders are simulated by
making the write raise what the kernel would (EROFS, EACCES), and the real chmod runs where it can."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import gentron.io as gio
from gentron.errors import USER_ERRORS
from gentron.io import StorageError, atomic_torch_save, atomic_write_json, make_folder, remove_stale_temporaries

TORCH_DISK_FULL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                   "file write failed")


def failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("code, where, message", [
    (errno.ENOSPC, "fsync", "disk full writing {path}: free space on that disk, or point runs_dir="),
    (errno.EDQUOT, "fsync", "disk quota exceeded writing {path}: free space within your quota"),
    (errno.EROFS, "mkstemp", "cannot write {path}: its file system is read-only; point runs_dir="),
    (errno.EACCES, "mkstemp", "cannot write {path}: permission denied on {folder}; make it writable"),
    (errno.EPERM, "replace", "cannot write {path}: permission denied on {folder}"),
])
def test_a_refused_write_is_one_line_naming_the_path(code, where, message, tmp_path, monkeypatch):
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()
    module = {"fsync": gio.os, "mkstemp": gio.tempfile, "replace": gio.os}[where]
    monkeypatch.setattr(module, where, failing(code))
    with pytest.raises(StorageError) as caught:
        atomic_write_json(target, {"a": 1})
    error = caught.value
    assert str(error).startswith(message.format(path=target, folder=target.parent)), str(error)
    assert "\n" not in str(error) and "Errno" not in str(error)
    assert error.errno == code and isinstance(error, USER_ERRORS)
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary


def test_torchs_failed_write_on_a_full_disk_reads_disk_full(tmp_path, monkeypatch):
    def full(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError(TORCH_DISK_FULL)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(gio, "_free_bytes", lambda path: 1024)
    target = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(StorageError, match=r"^disk full writing .*last\.pt: free space") as caught:
        atomic_torch_save(target, {"x": 1})
    assert "inline_container" not in str(caught.value)
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(gio, "_free_bytes", lambda path: 1 << 40)  # space left: an I/O failure, said as such
    with pytest.raises(StorageError, match="the disk or network file system failed"):
        atomic_torch_save(target, {"x": 1})


def test_a_file_where_a_folder_is_needed_is_named(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    for target in (blocker / "grid" / "cell" / "metrics.json", blocker / "metrics.json"):
        with pytest.raises(StorageError, match=f"{blocker} is a file where a folder is needed; move that file away"):
            atomic_write_json(target, {})
    with pytest.raises(StorageError, match="is a file where a folder is needed"):
        make_folder(blocker)


def test_a_program_fault_keeps_its_own_error(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {1j: 2})  # a key JSON cannot hold


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the monkeypatched tests stand in")
def test_a_read_only_folder_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=f"cannot write {folder / 'x.json'}: permission denied on {folder}"):
            atomic_write_json(folder / "x.json", {})
    finally:
        folder.chmod(0o700)


def test_temporaries_of_live_writers_are_kept_and_of_dead_ones_removed(tmp_path):
    """Any process may clean a shared folder (a grid's cache): a temporary whose writer is alive on this
    host is kept, one whose writer is gone is removed; one whose writer cannot be checked (another
    host, an older name) is removed where the caller owns the folder, or once it is a day old."""
    import subprocess
    import sys
    import time

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {"alive": f".a.pt.{gio.HOST_TAG}-{alive.pid}-x1.tmp", "dead": f".b.pt.{gio.HOST_TAG}-{dead.pid}-x2.tmp",
                 "other_host": f".c.pt.00000000-{alive.pid}-x3.tmp", "old_name": ".d.pt.k2j3h4.tmp"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        removed = {p.name for p in remove_stale_temporaries(tmp_path, shared=True)}
        assert removed == {names["dead"]}
        day_ago = time.time() - gio.STALE_AFTER_S - 60
        os.utime(tmp_path / names["old_name"], (day_ago, day_ago))
        assert {p.name for p in remove_stale_temporaries(tmp_path, shared=True)} == {names["old_name"]}
        assert {p.name for p in remove_stale_temporaries(tmp_path)} == {names["other_host"]}
        assert [p.name for p in tmp_path.iterdir()] == [names["alive"]]
    finally:
        alive.kill()
        alive.wait()


TINY = ["grid=conditioning", "seeds=[0]", "train.steps=2", "train.ckpt_every=1", "train.batch_size=2",
        "data.num_train=4", "sample.steps=1", "sample.prompt_sets=[compshapes_smoke]", "local.workers=1"]


@pytest.mark.slow
def test_the_runner_stops_at_a_full_disk_with_one_line_and_resumes_after(tmp_path, monkeypatch, capsys):
    """The disk fills up while the first cell trains (its checkpoint): one line, exit 2, the second cell
    is not started; once there is space the same command finishes the grid."""
    from ablations.grid import plan
    from ablations.launch import main

    real = gio._atomic

    def full_at_checkpoints(path, write):
        if Path(path).name == "last.pt":
            raise gio.storage_error(OSError(errno.ENOSPC, "No space left on device"), path)
        return real(path, write)

    monkeypatch.setattr(gio, "_atomic", full_at_checkpoints)
    runs = tmp_path / "runs"
    assert main([*TINY, f"runs_dir={runs}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "disk full writing" in lines[0] and "last.pt" in lines[0], err[-2000:]
    assert "Traceback" not in err
    cells = [c.cell_id for c in plan([*TINY, f"runs_dir={runs}"]).cells]
    from ablations import manifest

    started = [c for c in cells if manifest.read_or_empty(runs / "conditioning" / c).get("stages")]
    assert len(started) == 1
    monkeypatch.setattr(gio, "_atomic", real)
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    assert not list(runs.rglob("*.tmp"))


def test_a_full_disk_met_outside_gentron_io_is_the_same_one_line(tmp_path, monkeypatch, capsys):
    """A write the runner does not make itself (an appended log, a library's file) that meets a full
    disk stops the grid with the same line, naming the cell's folder when the error names no file."""
    import gentron.train
    from ablations.grid import plan
    from ablations.launch import main

    def full(cfg, run_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gentron.train, "train", full)
    runs = tmp_path / "runs"
    assert main([*TINY, f"runs_dir={runs}"]) == 2
    err = capsys.readouterr().err
    first = plan([*TINY, f"runs_dir={runs}"]).cells[0].cell_id
    assert f"error: disk full writing {runs / 'conditioning' / first}: free space" in err
    assert "Traceback" not in err and "failed; the others go on" not in err
