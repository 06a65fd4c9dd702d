"""Read LLM requests and responses: what a call will use, and what it used.

No optional dependency: this module only parses the providers' JSON and SSE.

* :func:`classify` tells which API an HTTP request calls (or ``None``), by
  the shape of its path; :func:`is_free` whether the provider bills nothing
  for it; :func:`azure_deployment` which Azure OpenAI deployment it names,
  :func:`gemini_model` which model a Gemini path names.
* :func:`estimate` reads a request body *before* it is sent: its input tokens
  (counted, or estimated from characters) and the most output it may produce.
* :func:`usage_from_json` reads the usage a JSON response reports.
* :class:`StreamUsage` reads it from a streamed (SSE) response, fed the raw
  bytes as they arrive.

What :class:`Usage` counts, and from which provider fields
-----------------------------------------------------------

``input_tokens`` counts **all** input tokens, cached ones included;
``output_tokens`` counts **all** output tokens, reasoning ones included. The
other fields are *parts* of those totals::

    cached_input_tokens + cache_write_tokens <= input_tokens
    reasoning_tokens                         <= output_tokens

====================  ==================================  ================================  ==================================================
Usage field           OpenAI chat / completions           OpenAI responses                  Anthropic messages
====================  ==================================  ================================  ==================================================
input_tokens          prompt_tokens                       input_tokens                      input_tokens + cache_read_input_tokens
                                                                                            + cache_creation_input_tokens
output_tokens         completion_tokens                   output_tokens                     output_tokens
cached_input_tokens   prompt_tokens_details.cached_tokens input_tokens_details.             cache_read_input_tokens
                                                          cached_tokens
cache_write_tokens    prompt_tokens_details.              input_tokens_details.             cache_creation_input_tokens
                      cache_write_tokens (1)              cache_write_tokens (1)
reasoning_tokens      completion_tokens_details.          output_tokens_details.            output_tokens_details.thinking_tokens (2)
                      reasoning_tokens                    reasoning_tokens
====================  ==================================  ================================  ==================================================

Gemini (``generateContent``, ``streamGenerateContent``) reports
``usageMetadata``: ``input_tokens`` is ``promptTokenCount`` (cached tokens
included) + ``toolUsePromptTokenCount``; ``output_tokens`` is
``candidatesTokenCount`` + ``thoughtsTokenCount`` (Gemini counts thoughts
apart, and bills them as output); ``cached_input_tokens`` is
``cachedContentTokenCount``; ``reasoning_tokens`` is ``thoughtsTokenCount``.
The same fields in snake_case (``usage_metadata.prompt_token_count``, as the
``google-genai`` SDK's ``model_dump()`` gives them) are read too.

OpenAI embeddings report ``prompt_tokens`` only: it is ``input_tokens``, and
``output_tokens`` is 0.

Mind the difference: OpenAI's ``prompt_tokens`` *includes* the cached tokens,
Anthropic's ``input_tokens`` *excludes* both cache reads and cache writes, so
for Anthropic the three are added up. (1) Only recent OpenAI responses (and
some compatible servers) report cache writes; otherwise 0. (2) Only recent
Anthropic responses report thinking tokens; otherwise 0.

Provider JSON is read defensively: a missing, ``null``, negative or
non-integer count reads as 0, a part larger than its total is cut down to the
total, and an answer with no usage at all gives ``None``. Nothing here raises
on what a provider sends; only a wrong argument from the caller's own code (a
body that is not a mapping, an unknown endpoint) raises ``InvalidRequest``.
"""

from __future__ import annotations

# one private module per part; this module is the public face of all four
from ._classify import Endpoint as Endpoint
from ._classify import azure_deployment as azure_deployment
from ._classify import classify as classify
from ._classify import gemini_model as gemini_model
from ._classify import is_free as is_free
from ._estimate import CHARS_PER_TOKEN as CHARS_PER_TOKEN
from ._estimate import DEFAULT_MAX_OUTPUT as DEFAULT_MAX_OUTPUT
from ._estimate import IMAGE_TOKENS as IMAGE_TOKENS
from ._estimate import MESSAGE_OVERHEAD as MESSAGE_OVERHEAD
from ._estimate import Estimate as Estimate
from ._estimate import estimate as estimate
from ._parse import Usage as Usage
from ._parse import usage_from_json as usage_from_json
from ._sse import StreamUsage as StreamUsage

__all__ = (
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "Endpoint",
    "Estimate",
    "StreamUsage",
    "Usage",
    "azure_deployment",
    "classify",
    "estimate",
    "gemini_model",
    "is_free",
    "usage_from_json",
)
