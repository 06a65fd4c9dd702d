"""The usage a provider's JSON reports: :class:`Usage` and :func:`usage_from_json`.

The provider fields each :class:`Usage` field is read from are tabled in
``ratebudget.integrations.usage``. The defensive readers of provider JSON
(``_count``, ``_get``, ...) live here and serve the estimator and the SSE
reader too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._exceptions import InvalidRequest
from ._classify import Endpoint, _endpoint

__all__ = ("Usage", "usage_from_json")


# --- reading provider JSON defensively ------------------------------------


def _count(value: object) -> int:
    """A token count from provider JSON: 0 unless a non-negative integer."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _is_count(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _get(body: Mapping[str, Any], *keys: str) -> object:
    value: object = body
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _check_body(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(
            f"expected the decoded JSON object (a mapping), got {type(body).__name__}"
        )
    return body


@dataclass(frozen=True)
class Usage:
    """Tokens a call used, as the provider reported them.

    ``input_tokens`` includes the cached input tokens and the cache writes;
    ``output_tokens`` includes the reasoning tokens (see the table in
    ``ratebudget.integrations.usage`` for each provider's fields). Raises
    ``InvalidRequest`` for a negative or non-integer count, or a part larger
    than its total.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    """Input tokens read from the provider's prompt cache (billed cheaper)."""
    cache_write_tokens: int = 0
    """Input tokens written to the prompt cache (Anthropic bills them dearer)."""
    reasoning_tokens: int = 0
    """Output tokens spent reasoning / thinking (billed as output)."""

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(
                    f"Usage.{name}={value!r}: expected a non-negative int"
                )
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise InvalidRequest(
                f"Usage: cached_input_tokens ({self.cached_input_tokens}) + "
                f"cache_write_tokens ({self.cache_write_tokens}) exceed "
                f"input_tokens ({self.input_tokens}), which include them"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise InvalidRequest(
                f"Usage: reasoning_tokens ({self.reasoning_tokens}) exceed "
                f"output_tokens ({self.output_tokens}), which include them"
            )

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``."""
        return self.input_tokens + self.output_tokens


def _usage(
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> Usage:
    """A consistent ``Usage``: parts are cut down to their totals."""
    cached = min(cached, input_tokens)
    cache_write = min(cache_write, input_tokens - cached)
    return Usage(
        input_tokens,
        output_tokens,
        cached,
        cache_write,
        min(reasoning, output_tokens),
    )


def _openai_chat_usage(usage: object) -> Usage | None:
    """``usage`` of chat completions and legacy completions (and embeddings)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (_is_count(prompt) or _is_count(completion)):
        return None
    return _usage(
        _count(prompt),
        _count(completion),
        _count(_get(usage, "prompt_tokens_details", "cached_tokens")),
        _count(_get(usage, "prompt_tokens_details", "cache_write_tokens")),
        _count(_get(usage, "completion_tokens_details", "reasoning_tokens")),
    )


def _openai_responses_usage(usage: object) -> Usage | None:
    if not isinstance(usage, Mapping):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not (_is_count(inp) or _is_count(out)):
        return None
    return _usage(
        _count(inp),
        _count(out),
        _count(_get(usage, "input_tokens_details", "cached_tokens")),
        _count(_get(usage, "input_tokens_details", "cache_write_tokens")),
        _count(_get(usage, "output_tokens_details", "reasoning_tokens")),
    )


def _anthropic_usage(usage: object) -> Usage | None:
    if not isinstance(usage, Mapping):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not (_is_count(inp) or _is_count(out)):
        return None
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    return _usage(
        _count(inp) + read + write,
        _count(out),
        read,
        write,
        _count(_get(usage, "output_tokens_details", "thinking_tokens")),
    )


def _either(body: Mapping[str, Any], camel: str, snake: str) -> object:
    """A Gemini field, as the REST API spells it or as the SDK's ``model_dump()``
    does."""
    value = body.get(camel)
    return body.get(snake) if value is None else value


def _gemini_usage(body: Mapping[str, Any]) -> Usage | None:
    """``usageMetadata`` of a Gemini response (camelCase, or snake_case as
    ``google-genai``'s ``model_dump()`` gives it).

    ``promptTokenCount`` includes the cached tokens; tool-use prompts (search
    results, code execution) are input too; thoughts are billed as output
    but not counted in ``candidatesTokenCount``.
    """
    usage = _either(body, "usageMetadata", "usage_metadata")
    if not isinstance(usage, Mapping):
        return None
    prompt = _either(usage, "promptTokenCount", "prompt_token_count")
    output = _either(usage, "candidatesTokenCount", "candidates_token_count")
    if not (_is_count(prompt) or _is_count(output)):
        return None
    tool = _count(
        _either(usage, "toolUsePromptTokenCount", "tool_use_prompt_token_count")
    )
    thoughts = _count(_either(usage, "thoughtsTokenCount", "thoughts_token_count"))
    return _usage(
        _count(prompt) + tool,
        _count(output) + thoughts,
        _count(_either(usage, "cachedContentTokenCount", "cached_content_token_count")),
        0,
        thoughts,
    )


def usage_from_json(endpoint: Endpoint | str, body: Mapping[str, Any]) -> Usage | None:
    """The usage a (non-streamed) JSON response reports, or ``None``.

    ``body`` is the decoded JSON object of a successful response. ``None``
    when it reports no usage (an error body, a server that omits it).
    """
    endpoint = _endpoint(endpoint)
    body = _check_body(body)
    if endpoint in (Endpoint.GEMINI_GENERATE, Endpoint.GEMINI_STREAM):
        return _gemini_usage(body)
    if endpoint is Endpoint.GEMINI_EMBED:
        # Gemini's embeddings report no usage (the estimate is committed);
        # read it should a response carry it
        usage = _gemini_usage(body)
        return None if usage is None else _usage(usage.input_tokens, 0)
    usage = body.get("usage")
    if endpoint is Endpoint.OPENAI_RESPONSES:
        return _openai_responses_usage(usage)
    if endpoint is Endpoint.ANTHROPIC_MESSAGES:
        return _anthropic_usage(usage)
    if endpoint is Endpoint.OPENAI_EMBEDDINGS:
        if not isinstance(usage, Mapping) or not _is_count(usage.get("prompt_tokens")):
            return None
        return _usage(_count(usage.get("prompt_tokens")), 0)
    return _openai_chat_usage(usage)
