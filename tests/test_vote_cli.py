"""Bad input to the study and vote commands: one line naming the problem and the fix, a non-zero exit,
no traceback and nothing written; `--help` works for every entry point."""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys

import pytest

from reports import study, voteapp
from tests.support.report_fixtures import REPO, prompts, write_sample_folder


@pytest.fixture
def folders(tmp_path):
    plist = prompts(4)
    out = {}
    for name in ("a", "b"):
        out[name] = tmp_path / name
        write_sample_folder(out[name], plist, tag=name)
    return out


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """Call an entry point in-process: (exit code, stderr). An uncaught exception fails the test with its
    traceback, which is what this table guards against."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_clear_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


def create_args(tmp_path, folders, *extra):
    return ["--db", str(tmp_path / "votes.sqlite"), "create", "--name", "s",
            "--system", f"a={folders['a']}", "--system", f"b={folders['b']}", *extra]


def study_count(db) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]


STUDY_CASES = [
    (["--raters", "-5"], ["--raters", "-5", "at least 1"]),
    (["--raters", "0"], ["--raters", "at least 1"]),
    (["--raters", "many"], ["--raters", "'many'", "whole number"]),
    (["--checks", "-1"], ["--checks", "at least 0"]),
    (["--pairs-per-rater", "0"], ["--pairs-per-rater", "at least 1"]),
    (["--pairs-per-rater", "9"], ["--pairs-per-rater 9", "4 compare pairs", "at most 4"]),
    (["--checks", "1", "--system", "c=/nonexistent/folder"], ["/nonexistent/folder"]),
    (["--size", "0x64"], ["--size", "'0x64' is not a size", "WIDTHxHEIGHT", "8-4096"]),
    (["--size", "big"], ["--size", "'big' is not a size"]),
    (["--fit", "stretch"], ["--fit", "'stretch'", "pad", "crop"]),
    (["--frames", "1"], ["--frames", "at least 2"]),
    (["--frame-ms", "5"], ["--frame-ms", "at least 20"]),
    (["--frames", "8"], ["--frames 8", "every image of this study is a still", "leave --frames out"]),
]


@pytest.mark.parametrize("extra, words", STUDY_CASES)
def test_study_create_bad_arguments(tmp_path, folders, capsys, extra, words):
    code, err = run_cli(study.main, create_args(tmp_path, folders, *extra), capsys)
    assert code == 2
    one_clear_line(err, *words)
    assert study_count(tmp_path / "votes.sqlite") == 0


def test_study_config_errors(tmp_path, folders, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("db: [unclosed\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- db\n- port\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("dbb: x.sqlite\n")
    bad_port = tmp_path / "port.yaml"
    bad_port.write_text("port: eighty\n")
    cases = [([str(tmp_path / "missing.yaml")], ["missing.yaml", "not found"]),
             ([], ["--config", "expected one argument"]),
             ([str(bad_yaml)], ["bad.yaml", "not valid YAML"]),
             ([str(a_list)], ["list.yaml", "mapping", "db, host, port"]),
             ([str(unknown)], ["unknown.yaml", "'dbb'", "db, host, port"]),
             ([str(bad_port)], ["port.yaml", "port", "'eighty'", "1-65535"])]
    for value, words in cases:
        argv = ["--config", *value] + create_args(tmp_path, folders)[2:] if value else ["--config"]
        code, err = run_cli(study.main, argv, capsys)
        assert code == 2, (value, err)
        one_clear_line(err, *words)
    assert study_count(tmp_path / "votes.sqlite") == 0


def test_study_database_and_owner_errors(tmp_path, folders, capsys):
    not_db = tmp_path / "notes.txt"
    not_db.write_text("these are notes, not votes\n" * 50)
    code, err = run_cli(study.main, ["--db", str(not_db)] + create_args(tmp_path, folders)[2:], capsys)
    assert code == 2
    one_clear_line(err, str(not_db), "not a SQLite")
    assert not_db.read_text().startswith("these are notes"), "the file is left as it was"
    code, err = run_cli(study.main, ["--db", str(tmp_path)] + create_args(tmp_path, folders)[2:], capsys)
    assert code == 2
    one_clear_line(err, str(tmp_path), "folder")
    assert run_cli(study.main, create_args(tmp_path, folders, "--raters", "2"), capsys)[0] == 0
    code, err = run_cli(study.main, create_args(tmp_path, folders), capsys)
    assert code == 2
    one_clear_line(err, "'s'", "--name")
    db = ["--db", str(tmp_path / "votes.sqlite")]
    code, err = run_cli(study.main, db + ["add-raters", "--study", "feedbeef", "--secret", "x"], capsys)
    assert code == 2
    one_clear_line(err, "feedbeef", "no study")
    code, err = run_cli(study.main, db + ["add-raters", "--study", "x", "--secret", "y", "--count", "0"], capsys)
    assert code == 2
    one_clear_line(err, "--count", "at least 1")


def test_vote_server_bad_arguments(tmp_path, capsys):
    not_db = tmp_path / "notes.sqlite"
    not_db.write_bytes(b"\x00junk" * 100)
    unknown = tmp_path / "vote.yaml"
    unknown.write_text("hots: 0.0.0.0\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cases = [(["--port", "-1"], ["--port", "1-65535"]),
                 (["--port", "70000"], ["--port", "70000", "1-65535"]),
                 (["--port", "http"], ["--port", "'http'"]),
                 (["--port", str(taken)], [f"port {taken}", "in use", "--port"]),
                 (["--host", "999.1.1.1"], ["999.1.1.1", "--host"]),
                 (["--db", str(tmp_path)], [str(tmp_path), "folder"]),
                 (["--db", str(not_db)], [str(not_db), "not a SQLite"]),
                 (["--config", str(tmp_path / "nope.yaml")], ["nope.yaml", "not found"]),
                 (["--config", str(unknown)], ["vote.yaml", "'hots'", "db, host, port"]),
                 ([], ["v.sqlite", "does not exist", "--create"])]
        for argv, words in cases:
            code, err = run_cli(voteapp.main, ["--db", str(tmp_path / "v.sqlite"), *argv], capsys)
            assert code == 2, (argv, err)
            one_clear_line(err, *words)
    assert not_db.read_bytes() == b"\x00junk" * 100
    assert not (tmp_path / "v.sqlite").exists()  # a mistyped --db creates nothing


def test_help_works_for_every_entry_point(capsys):
    for main, argv, words in [(study.main, ["--help"], ["create", "add-raters"]),
                              (study.main, ["create", "--help"], ["--pairs-per-rater", "--raters", "--checks",
                                                                  "--size", "--fit", "--frames", "--frame-ms"]),
                              (study.main, ["add-raters", "--help"], ["--count"]),
                              (voteapp.main, ["--help"], ["--db", "--port"])]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), (argv, out)


@pytest.mark.parametrize("command, words", [
    ([sys.executable, "-m", "reports.study", "create", "--name", "x", "--system", "a=/x", "--system", "b=/y",
      "--raters", "-5"], ["--raters", "-5"]),
    ([sys.executable, "-m", "reports.study", "--config", "/nonexistent/vote.yaml", "create", "--name", "x"],
     ["/nonexistent/vote.yaml", "not found"]),
    ([sys.executable, "reports/vote.py", "--db", "/"], ["/", "folder"]),
])
def test_real_entry_points_exit_cleanly(tmp_path, command, words):
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    one_clear_line(done.stderr, *words)
    assert done.stdout == ""


def test_a_cell_folder_given_for_samples_names_its_sample_folders(tmp_path):
    from eval.common import read_samples
    from tests.support.report_fixtures import prompts, write_sample_folder

    cell = tmp_path / "cell"
    inner = cell / "samples" / "compshapes_mini"
    write_sample_folder(inner, prompts(2))
    with pytest.raises(FileNotFoundError, match=f"cell folder, not a sample folder.*{inner}"):
        read_samples(cell)
