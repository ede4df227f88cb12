"""Docs stay true: every `shoplens ...` command and flag they show exists; benchmarks.md is generated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from shoplens.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "mobile_assets").glob("*.md"))]
_CMD = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?shoplens((?:\s+[^\s`|)]+)*)")


def _invocations(text: str) -> list[list[str]]:
    found = []
    fenced = [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M) if lang in ("", "bash", "sh", "console")]
    for block in fenced + [span for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)) if "shoplens " in span]:
        for line in block.splitlines():
            for m in _CMD.finditer(line):
                tokens = m.group(1).split()
                tokens = [t for t in tokens if t not in {"\\"}]
                cut = next((i for i, t in enumerate(tokens) if t in {"&&", "||", ";", "|", ">", "2>&1"} or t.startswith("#")), len(tokens))
                if tokens[:cut]:
                    found.append(tokens[:cut])
    return found


def _resolve(tokens: list[str]) -> tuple[object, list[str]]:
    cmd = get_command(app)
    path = []
    for t in tokens:
        if t in getattr(cmd, "commands", {}):
            cmd = cmd.commands[t]
            path.append(t)
        elif t.startswith("-"):
            continue
        else:
            break
    return cmd, path


def _flags(cmd: object) -> set[str]:
    names = {"--help"}
    for p in getattr(cmd, "params", []):
        for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
            names.add(opt)
    return names


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_and_flags_exist(doc: Path) -> None:
    for tokens in _invocations(doc.read_text()):
        cmd, path = _resolve(tokens)
        if not path and tokens[0] not in {"--help", "--version"}:
            raise AssertionError(f"{doc.name}: `shoplens {' '.join(tokens)}`: unknown command {tokens[0]!r}")
        flags = {t.split("=")[0] for t in tokens if t.startswith("--")}
        unknown = flags - _flags(cmd)
        assert not unknown, f"{doc.name}: `shoplens {' '.join(tokens)}`: {sorted(unknown)} not options of `shoplens {' '.join(path)}`"


def test_benchmarks_doc_is_generated_from_results() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_quick_start_matches_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme.split("## Quick start", 1)[1].split("\n## ", 1)[0], flags=re.S)
    commands = [b.strip() for b in blocks]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    for c in commands:
        assert c in ci, f".ci/run does not run the README command: {c}"
