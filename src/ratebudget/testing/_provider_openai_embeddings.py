"""The fake OpenAI ``POST /v1/embeddings``: float lists, or base64 float32.

A vector is a function of its input alone (its SHA-256, spread over
``dimensions`` values in [-1, 1)); 8 dimensions unless the request asks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

from ._provider_api import (
    BadRequest,
    Build,
    Context,
    Response,
    count_tokens,
    int_or_none,
    json_response,
    require,
)

__all__ = ("plan_embeddings",)

_EMBEDDING_DIMENSIONS = 8


def plan_embeddings(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    require(body, "model", "input")
    inputs = body["input"]
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
    ):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'input' must be a string or a non-empty array")
    counts = []
    for item in inputs:
        if isinstance(item, str):
            counts.append(count_tokens(item))
        elif isinstance(item, list):
            counts.append(len(item))
        else:
            raise BadRequest("'input' items must be strings or token arrays")
    prompt = sum(counts)
    dimensions = int_or_none(body.get("dimensions"), "dimensions")
    dimensions = dimensions or _EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"

    def vector(item: Any) -> Any:
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        values = [(digest[i % len(digest)] - 128) / 128 for i in range(dimensions)]
        if as_base64:
            packed = struct.pack(f"<{dimensions}f", *values)
            return base64.b64encode(packed).decode()
        return values

    def build() -> tuple[int, int, int, Callable[[], Response]]:
        data = [
            {"object": "embedding", "index": i, "embedding": vector(item)}
            for i, item in enumerate(inputs)
        ]
        payload = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return 0, 0, 0, lambda: json_response(payload)

    return prompt, build
