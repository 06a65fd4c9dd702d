"""README.md's quick-start commands are the ones CI runs, and they work."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _console_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```console\n(.*?)\n```", text, flags=re.DOTALL)


class TestQuickStart:
    def test_readme_gives_two_quick_start_commands(self) -> None:
        commands = _console_commands()
        assert len(commands) == 2
        assert commands[0].endswith("ratebudget demo")
        assert commands[1].endswith("pytest")

    def test_ci_runs_the_readme_install_and_test_commands(self) -> None:
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        ci_steps = [
            line.strip()
            for line in ci.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        readme_steps = [s.strip() for s in _console_commands()[1].split("&&")]
        # the venv is made (and activated) by .ci/run's own lines first
        install, test = readme_steps[-2], readme_steps[-1]
        assert install in ci_steps
        assert test in ci_steps
        assert ci_steps.index(install) + 1 == ci_steps.index(test)
