"""JSON values the gateway accepts: whole Unicode text and finite numbers.

Python's JSON parser (which FastAPI uses) accepts `NaN`, `Infinity`, `1e309`
and lone surrogates like `"\\ud800"`. None of them can be written back as JSON
or encoded as UTF-8 for the tokenizer, so they are refused at validation,
naming where they are, and never echoed.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_METADATA_DEPTH = 32  # echoed back: deep nesting would only cost the serialisers stack


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in `text`, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def whole_unicode(text: str) -> str:
    at = lone_surrogate_at(text)
    if at is not None:
        raise ValueError(f"must be valid Unicode: character {at} is a lone surrogate (half of a UTF-16 pair)")
    return text


def json_safe_object(value: dict[str, Any]) -> dict[str, Any]:
    """Walks the object (iteratively: depth is bounded here, not by the stack)
    and refuses what JSON/UTF-8 cannot carry back, naming the path."""
    pending: list[tuple[str, Any, int]] = [("", value, 1)]
    while pending:
        path, item, depth = pending.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels at {path or 'the top'}")
        if isinstance(item, dict):
            for key, child in item.items():
                if lone_surrogate_at(key) is not None:
                    where = f"under {path}" if path else "at the top level"
                    raise ValueError(f"a key {where} is not valid Unicode (a lone surrogate)")
                pending.append((f"{path}.{key}" if path else key, child, depth + 1))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path}: numbers must be finite (not NaN or infinite)")
        elif isinstance(item, str) and lone_surrogate_at(item) is not None:
            raise ValueError(f"{path}: not valid Unicode (a lone surrogate)")
    return value


UnicodeText = Annotated[str, AfterValidator(whole_unicode)]
JsonObject = Annotated[dict[str, Any], AfterValidator(json_safe_object)]
