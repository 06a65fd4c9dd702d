"""The usage a streamed (server-sent events) response reports: :class:`StreamUsage`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._classify import Endpoint, _endpoint
from ._parse import (
    Usage,
    _anthropic_usage,
    _either,
    _gemini_usage,
    _get,
    _openai_chat_usage,
    _openai_responses_usage,
)

__all__ = ("StreamUsage",)


class StreamUsage:
    """Usage read from a streamed (server-sent events) response.

    Feed it the raw bytes of the body as they arrive, split anywhere (even
    inside a line or a UTF-8 character)::

        meter = StreamUsage(Endpoint.OPENAI_CHAT)
        async for chunk in response.aiter_raw():
            meter.feed(chunk)
        usage = meter.usage  # None if the stream reported none

    Where each provider reports usage in a stream:

    * **OpenAI chat and completions** send it in one last chunk (with empty
      ``choices``) before ``data: [DONE]``, and **only when the request sets**
      ``"stream_options": {"include_usage": true}``: a metering transport
      should add it. Servers that send usage in several chunks: the last
      one wins.
    * **OpenAI responses** send it in the final ``response.completed`` event
      (or ``response.incomplete`` / ``response.failed``).
    * **Anthropic** sends the input (and cache) tokens in ``message_start``
      and the *cumulative* output tokens in each ``message_delta``.
    * **Gemini** (``streamGenerateContent?alt=sse``) sends ``usageMetadata``
      in its chunks, cumulative: the last one wins.

    ``usage`` is what the provider reported so far; if a stream is cut short
    before that, ``text_chars`` (the characters of output seen: text,
    reasoning, refusals, tool-call arguments) lets the caller estimate the
    output, e.g. ``ceil(text_chars / 4)``. Malformed events are ignored.
    """

    def __init__(self, endpoint: Endpoint | str) -> None:
        self.endpoint = _endpoint(endpoint)
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no line ending
        self._skip_lf = False
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._usage: Usage | None = None
        self._usage_final = False
        self._anthropic: dict[str, object] = {}
        self._model: str | None = None
        self._text_chars = 0
        self._finished = False

    @property
    def usage(self) -> Usage | None:
        """The usage the provider reported so far, or ``None``."""
        return self._usage

    @property
    def usage_final(self) -> bool:
        """Whether ``usage`` is the provider's count for the whole call, not a
        count so far (Anthropic's ``message_start`` before its
        ``message_delta``, a Gemini chunk before the one with its
        ``finishReason``): a stream cut short before that used at least
        ``usage`` and maybe ``text_chars`` more."""
        return self._usage is not None and self._usage_final

    @property
    def text_chars(self) -> int:
        """Characters of output (text, reasoning, tool arguments) seen so far."""
        return self._text_chars

    @property
    def model(self) -> str | None:
        """The model the stream says answered, once it said so."""
        return self._model

    @property
    def finished(self) -> bool:
        """Whether the stream's final event arrived.

        ``data: [DONE]`` (OpenAI chat, completions), ``response.completed``,
        ``response.incomplete`` or ``response.failed`` (responses),
        ``message_stop`` (Anthropic), a ``finishReason`` (Gemini).
        """
        return self._finished

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the stream."""
        if not chunk:
            return
        if self._skip_lf:  # the previous chunk ended with \r: maybe \r\n
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._buffer
        buffer += chunk
        start = 0
        i = self._scanned
        end = len(buffer)
        while i < end:
            byte = buffer[i]
            if byte == 0x0A or byte == 0x0D:  # \n or \r
                self._line(bytes(buffer[start:i]))
                i += 1
                if byte == 0x0D:
                    if i == end:
                        self._skip_lf = True
                    elif buffer[i] == 0x0A:
                        i += 1
                start = i
            else:
                i += 1
        del buffer[:start]
        self._scanned = len(buffer)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch()
            return
        if line[0] == ":":  # a comment
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value

    def _dispatch(self) -> None:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = "", []
        if not data:
            return
        if data.strip() == "[DONE]":
            self._finished = True
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if isinstance(payload, Mapping):
            self._payload(event, payload)

    def _payload(self, event: str, payload: Mapping[str, Any]) -> None:
        endpoint = self.endpoint
        kind = payload.get("type")
        kind = kind if isinstance(kind, str) else event
        if endpoint is Endpoint.ANTHROPIC_MESSAGES:
            self._anthropic_event(kind, payload)
        elif endpoint is Endpoint.OPENAI_RESPONSES:
            self._responses_event(kind, payload)
        elif endpoint in (Endpoint.GEMINI_GENERATE, Endpoint.GEMINI_STREAM):
            self._gemini_chunk(payload)
        else:
            self._chat_chunk(payload)

    def _set_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self._model = model

    def _add_text(self, *values: object) -> None:
        for value in values:
            if isinstance(value, str):
                self._text_chars += len(value)

    def _chat_chunk(self, payload: Mapping[str, Any]) -> None:
        self._set_model(payload.get("model"))
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, Mapping):
                    continue
                self._add_text(choice.get("text"))  # legacy completions
                delta = choice.get("delta")
                if not isinstance(delta, Mapping):
                    continue
                self._add_text(
                    delta.get("content"),
                    delta.get("refusal"),
                    delta.get("reasoning_content"),  # compatible servers
                    delta.get("reasoning"),
                )
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        self._add_text(_get(call, "function", "arguments"))
        usage = _openai_chat_usage(payload.get("usage"))
        if usage is not None:
            self._usage, self._usage_final = usage, True

    def _gemini_chunk(self, payload: Mapping[str, Any]) -> None:
        self._set_model(_either(payload, "modelVersion", "model_version"))
        finishes = False
        candidates = payload.get("candidates")
        if isinstance(candidates, list):
            for candidate in candidates:
                if not isinstance(candidate, Mapping):
                    continue
                if _either(candidate, "finishReason", "finish_reason"):
                    self._finished = finishes = True
                parts = _get(candidate, "content", "parts")
                if not isinstance(parts, list):
                    continue
                for part in parts:
                    if not isinstance(part, Mapping):
                        continue
                    self._add_text(part.get("text"))
                    call = _either(part, "functionCall", "function_call")
                    if isinstance(call, Mapping) and call.get("args") is not None:
                        self._add_text(json.dumps(call.get("args"), default=str))
        usage = _gemini_usage(payload)
        if usage is not None:
            self._usage, self._usage_final = usage, finishes

    def _responses_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        response = payload.get("response")
        if isinstance(response, Mapping):
            self._set_model(response.get("model"))
            usage = _openai_responses_usage(response.get("usage"))
            if usage is not None:
                self._usage, self._usage_final = usage, True
        if kind.endswith(".delta"):
            self._add_text(payload.get("delta"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._finished = True

    def _anthropic_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self._set_model(message.get("model"))
                self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._merge(payload.get("usage"))
            self._usage_final = True
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping):
                self._add_text(
                    delta.get("text"), delta.get("thinking"), delta.get("partial_json")
                )
        elif kind == "message_stop":
            self._finished = True

    def _merge(self, usage: object) -> None:
        """Anthropic: later counts replace earlier ones (they are cumulative)."""
        if not isinstance(usage, Mapping):
            return
        for key, value in usage.items():
            if value is not None:
                self._anthropic[key] = value
        merged = _anthropic_usage(self._anthropic)
        if merged is not None:
            self._usage = merged
