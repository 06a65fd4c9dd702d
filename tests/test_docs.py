"""Run every example of the documentation.

Each fenced block whose info string is exactly ``python`` in ``docs/*.md``
(and ``README.md``), and each script in ``examples/``, is run on its own in a
fresh interpreter: the same one running the tests, from a scratch directory,
with warnings turned into errors. A block must therefore be complete: its
imports included, no network, no long sleeps. Fragments that are not meant to
run use the info string ``py`` instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds per example; each takes well under one

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*python[ \t]*$")


@dataclass(frozen=True)
class Example:
    """One runnable piece of documentation."""

    path: Path
    line: int  # 1-based line of the opening fence (0 for a whole file)
    code: str

    @property
    def name(self) -> str:
        rel = self.path.relative_to(ROOT).as_posix()
        return f"{rel}:{self.line}" if self.line else rel


def python_blocks(path: Path) -> list[Example]:
    """The ``python`` fenced blocks of a Markdown file, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        close = re.compile(
            rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$"
        )
        body: list[str] = []
        j = i + 1
        while j < len(lines) and close.match(lines[j]) is None:
            body.append(
                lines[j][len(indent) :]
                if lines[j].startswith(indent)
                else lines[j].lstrip()
            )
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path}:{i + 1}: unclosed code block")
        found.append(Example(path, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return found


def collect() -> list[Example]:
    markdown = sorted((ROOT / "docs").glob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        markdown.append(readme)
    examples = [ex for path in markdown for ex in python_blocks(path)]
    examples += [
        Example(path, 0, path.read_text(encoding="utf-8"))
        for path in sorted((ROOT / "examples").glob("*.py"))
    ]
    return examples


EXAMPLES = collect()


def run(
    example: Example, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(example.code, encoding="utf-8")
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONSTARTUP", None)
    return subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_examples_are_collected() -> None:
    names = {ex.path.name for ex in EXAMPLES}
    assert {"getting-started.md", "concepts.md", "testing.md"} <= names
    assert {"quickstart.py", "threads.py"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.name for ex in EXAMPLES])
def test_example_runs(
    example: Example, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra = {}
    if "RATEBUDGET_REDIS_URL" in example.code:  # the tests' own Redis server
        extra["RATEBUDGET_REDIS_URL"] = request.getfixturevalue("redis_url")
    result = run(example, tmp_path, extra)
    if result.returncode != 0:
        pytest.fail(
            f"{example.name} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
