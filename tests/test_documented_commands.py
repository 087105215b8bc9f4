"""Every grid command the README and docs show survives a real shell: bash splits and unquotes it (brace
expansion, globbing) as a user's terminal would, and the grid's parser reads the result. Every command
the runner and the browser print plans, after bash, exactly the cells it was printed for."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ablations.command_line import parse_args

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:python ablations/run\.py|gentron-grid)\s")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for each grid command in a code block or inline code span, continuation
    lines joined, trailing comments dropped."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        candidates = [line for line in text.splitlines()]
        candidates += re.findall(r"`([^`\n]+)`", text)
        for number, line in enumerate(candidates, 1):
            match = COMMAND.search(line)
            if not match or "`" in line[match.start():]:
                continue
            command = line[match.start():].split("  #")[0].split(" # ")[0].strip()
            found.append((f"{path.name}:{number}", command))
    return found


def shell_argv(command: str, cwd: Path) -> list[str]:
    """The arguments bash passes to the program for `command` (run in an empty folder, as a user's
    shell would expand it there)."""
    program = command.split()[0] if command.startswith("gentron-grid") else "python ablations/run.py"
    rest = re.sub(r"<[^<>]*>", "X", command[len(program):])  # placeholders the reader fills in
    rest = re.sub(r"(^|\s)\.\.\.(?=\s|$)", " ", rest)  # "run.py ... local.workers=2": elided arguments
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {rest}"], cwd=cwd, capture_output=True, check=True)
    return [a.decode() for a in out.stdout.split(b"\0") if a]


COMMANDS = documented_commands()


def test_the_docs_show_grid_commands():
    assert len(COMMANDS) >= 10
    assert any("data.path='/data/laion/{00000..09999}.tar'" in c for _, c in COMMANDS)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_grid_command_parses_after_bash(where, command, tmp_path):
    argv = shell_argv(command, tmp_path)
    if argv == ["--help"]:
        return  # handled before the overrides are parsed (test_run_local)
    parse_args([a for a in argv if a not in ("grid=X", "X")])  # raises ConfigError naming the problem


def test_an_unquoted_brace_pattern_is_refused_with_the_quoting_to_use():
    from gentron.errors import ConfigError

    argv = ["grid=text_encoder", "data.path=/data/laion/{00000..09999}.tar"]  # what bash leaves of '...'
    with pytest.raises(ConfigError, match=r"""double quotes.*"data\.path='/data/laion/\{00000\.\.09999\}\.tar'\""""):
        parse_args(argv)


# --- printed commands plan exactly the cells they were printed for -------------------------------

def replanned(command: str, cwd: Path) -> list[str]:
    """The cell ids of the plan a printed command makes once bash has read it."""
    from ablations.grid import plan

    words = shell_argv(command, cwd)
    return [cell.cell_id for cell in plan(words).cells]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_printed_commands_of_a_grid_with_encoder_recipes_plan_the_same_cells(tmp_path, capsys):
    """The resume hint, the browser's reproduce command (from grid.yaml) and the SLURM hint keep the
    encoder recipe, seeds, preset and cell overrides: planning them gives the cells shown."""
    from ablations import runfolder
    from ablations.grid import plan
    from ablations.launch import command, finish, prepare

    runs = tmp_path / "my runs"
    p = plan(["grid=text_encoder", "encoders.clip.steps=10", "encoders.t5.lr=0.001", "seeds=[1,2]",
              "train.steps=7", "preset=smoke", "local.workers=1", f"runs_dir={runs}"])
    ids = [cell.cell_id for cell in p.cells]
    prepare(p)
    finish(p, failed=[str(p.grid_dir / ids[0])])
    hint = capsys.readouterr().err.split("resume them with: ", 1)[1].strip()
    browser = runfolder.rerun_command(runfolder.grid_record(p.grid_dir), p.grid_dir.parent)
    slurm = command(p, "launcher=slurm", "slurm=local")
    for printed in (hint, browser, slurm):
        assert "encoders.clip.steps=10" in printed and "preset=smoke" in printed
        assert replanned(printed, tmp_path) == ids, printed


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_command_for_a_missing_init_from_trains_exactly_that_checkpoint(tmp_path):
    """grid=mfg starts from grid=conditioning's cell (train.init_from): the dry run names the command
    that trains it, and planning that command gives the cell whose checkpoint mfg loads."""
    from ablations import preflight
    from ablations.grid import plan

    p = plan(["grid=mfg", "seeds=[3]", "train.steps=9", "data.num_train=64", "preset=smoke",
              f"runs_dir={tmp_path / 'runs'}"])
    need = next(n for n in preflight.missing(p) if n.used_by == "train.init_from")
    printed = need.fix.split(": ", 1)[1]
    wanted = {Path(cell.config.train.init_from).parent.parent.name for cell in p.cells}
    assert len(wanted) == 1 and wanted <= set(replanned(printed, tmp_path))  # every arm starts from one T2I cell
    mfg_again = preflight.runfolder.rerun_command({"name": "mfg", "plan_args": p.args}, tmp_path / "runs")
    assert replanned(mfg_again, tmp_path) == [cell.cell_id for cell in p.cells]
