"""Keys for cached results: every input that can change the output, hashed."""

from __future__ import annotations

import hashlib
import json


def result_key(model_id: str, prompt: str, params: dict) -> str:
    """`splitgpt:result:<sha256>` over model, prompt and every generation parameter."""
    material = json.dumps({"model": model_id, "prompt": prompt, "params": params}, sort_keys=True, ensure_ascii=False)
    return "splitgpt:result:" + hashlib.sha256(material.encode()).hexdigest()
