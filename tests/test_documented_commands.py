"""Every grid command the README and docs show survives a real shell: bash splits and unquotes it (brace
expansion, globbing) as a user's terminal would, and the grid's parser reads the result."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ablations.grid import parse_args

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
