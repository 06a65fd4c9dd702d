"""Every keyword an error message or a docs page names exists.

A message that says "pass ``unknown=``" to a user of ``BudgetTransport``
(whose keyword is ``unknown_model=``) sends them to an argument that is not
there. This collects each ``name=`` that the docs write in inline code and
that the package's ``raise`` statements put in their messages, and checks
it against the parameters of the public API.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ratebudget

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(ratebudget.__file__).resolve().parent

PUBLIC_MODULES = (
    "ratebudget",
    "ratebudget.stores",
    "ratebudget.stores.sqlite",
    "ratebudget.stores.redis",
    "ratebudget.testing",
    "ratebudget.compat",
    "ratebudget.integrations.httpx",
    "ratebudget.integrations.meter",
    "ratebudget.integrations.usage",
    "ratebudget.integrations.prices",
    "ratebudget.integrations.langchain",
    "ratebudget.alerts",
    "ratebudget.otel",
)

# ``name=`` written in docs or messages that are not Python keywords of ours
NOT_OURS = {
    "mode",  # SQLite's URI parameter: file:...?mode=ro
    "api-version",  # Azure OpenAI's query parameter
    "PYTHONPATH",
    "RATEBUDGET_REQUIRE_REDIS",
    "RATEBUDGET_REQUIRE_POSTGRES",
    "COLUMNS",
    "TERM",
    "http_client",  # the OpenAI and Anthropic SDKs' own
    "transport",  # httpx's own Client(transport=...) (and ours)
    "base_url",  # the SDKs' own
    "azure_endpoint",  # AsyncAzureOpenAI's own
    "api_version",  # AsyncAzureOpenAI's own
    "max_retries",  # the SDKs' own
    "executable_path",  # Playwright's
    "stream_options",  # an OpenAI request field
    "include_usage",  # ditto
    "max_tokens",  # a request field (also meter()'s)
    "max_output_tokens",  # a request field
    "backend",  # anyio.run's
    "fast_acquire",  # anyio's locks'
    "autojump_threshold",  # trio's MockClock's
    "tzinfo",  # datetime's
    "tracing_disabled",  # the OpenAI Agents SDK's RunConfig's
    "retry",  # ditto, ModelSettings'
    "policy",  # ditto, ModelRetrySettings'
}


def _names(obj: Any) -> Iterator[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    for p in sig.parameters.values():
        if p.kind not in (p.VAR_POSITIONAL,):
            yield p.name


def known_keywords() -> set[str]:
    """Every parameter of every public callable, and every public attribute."""
    known: set[str] = set()
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", dir(module)):
            if attr.startswith("_") and attr != "__version__":
                continue
            obj = getattr(module, attr, None)
            if obj is None:
                continue
            known.update(_names(obj))
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if member.startswith("__") and member != "__init__":
                        continue
                    known.add(member)
                    known.update(_names(value))
                known.update(getattr(obj, "__dataclass_fields__", {}))
    # Rate and Cap take their axis as a keyword: every axis the docs use
    known.update({"tokens", "requests", "input_tokens", "output_tokens", "usd"})
    return known


KEYWORD = re.compile(r"(?<![\w.?&-])([A-Za-z_][\w-]*)=(?!=)")


def doc_keywords() -> dict[str, set[str]]:
    """``name=`` in the inline code of each docs page (code blocks run as tests)."""
    found: dict[str, set[str]] = {}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        if page.name in ("benchmarks.md", "changelog.md"):
            continue  # generated, and history
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", text):
            if span.startswith(("-", "$", "http", "pip ", "python")):
                continue
            for name in KEYWORD.findall(span):
                found.setdefault(name, set()).add(page.name)
    return found


def message_keywords() -> dict[str, set[str]]:
    """``name=`` in the string parts of every ``raise`` of the package."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    for name in KEYWORD.findall(part.value):
                        found.setdefault(name, set()).add(
                            f"{path.relative_to(PACKAGE)}:{part.lineno}"
                        )
    return found


def test_every_keyword_the_docs_name_exists() -> None:
    known = known_keywords() | NOT_OURS
    missing = {k: sorted(v) for k, v in doc_keywords().items() if k not in known}
    assert not missing, f"the docs name keywords that do not exist: {missing}"


def test_every_keyword_an_error_message_names_exists() -> None:
    known = known_keywords() | NOT_OURS
    missing = {k: sorted(v) for k, v in message_keywords().items() if k not in known}
    assert not missing, f"error messages name keywords that do not exist: {missing}"


def test_the_check_can_fail() -> None:
    """A keyword nobody defines is caught (the collectors see it)."""
    assert "unknwon_model" not in known_keywords()
    assert KEYWORD.findall("pass unknwon_model={'input_mtok': 1}") == ["unknwon_model"]
    assert KEYWORD.findall("a == b, file:x?mode=ro") == []
