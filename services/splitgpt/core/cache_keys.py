"""Keys for cached results: every input that can change the output, hashed."""

from __future__ import annotations

import hashlib
import json


def result_key(model_id: str, prompt: str, params: dict, scope: str = "") -> str:
    """`splitgpt:result:<sha256>` over model, prompt, every generation parameter,
    and the scope of callers who may share the result (the API's cache_scope)."""
    material = json.dumps(
        {"model": model_id, "prompt": prompt, "params": params, "scope": scope}, sort_keys=True, ensure_ascii=False
    )
    return "splitgpt:result:" + hashlib.sha256(material.encode()).hexdigest()
