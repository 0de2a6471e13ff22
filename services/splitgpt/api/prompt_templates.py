"""Pipeline prompt templates: `{input}` and `{stage_N}` (earlier stages only), `{{`/`}}` literal.

Parsed once, before any stage runs, so a bad template is a 422 naming its stage
and nothing has been generated; rendered per stage from the texts so far.
"""

from __future__ import annotations

import re

from . import context_limits
from .errors import ApiError

# A rendered prompt longer than this is refused before it is built: a template of
# many `{stage_N}` could otherwise multiply a stage's text into gigabytes. The
# largest context's prompt is far shorter (api/context_limits.py).
MAX_RENDERED_CHARS = 1 << 20


INPUT = -1  # a template part that stands for the pipeline's input; N >= 0 stands for stage N's text
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_STAGE = re.compile(r"stage_(\d{1,4})")


def parse_template(template: str, stage: int) -> list[str | int]:
    """The template as literal strings and references (INPUT, or an earlier stage's index);
    a 422 naming the stage and its `prompt` for anything else in braces. Nothing of the
    template is echoed: a position says where."""
    parts: list[str | int] = []
    at = 0
    for match in _TOKEN.finditer(template):
        if match.start() > at:
            parts.append(template[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
            continue
        name = match.group(1)
        if name is None:
            raise _template_error(
                stage, f"a lone `{token}` at character {match.start()}: write `{token * 2}` for a literal brace"
            )
        if name == "input":
            parts.append(INPUT)
            continue
        ref = _STAGE.fullmatch(name)
        if ref is None:
            if stage == 0:
                allowed = "`{input}` (stage 0 has no earlier stage)"
            else:
                allowed = "`{input}` and `{stage_0}`" + (f" to `{{stage_{stage - 1}}}`" if stage > 1 else "")
            raise _template_error(
                stage,
                f"the placeholder at character {match.start()} is not one a template may use: only {allowed}; "
                "write `{{` and `}}` for literal braces",
            )
        n = int(ref.group(1))
        if n >= stage:
            which = "itself" if n == stage else f"stage {n}, which runs after it"
            raise _template_error(
                stage,
                f"the placeholder at character {match.start()} refers to {which}: a stage may use earlier stages' texts only",
            )
        parts.append(n)
    if at < len(template):
        parts.append(template[at:])
    return parts


def render(parts: list[str | int], input_text: str, texts: list[str], stage: int) -> str:
    """The prompt `parts` stand for; a 400 where it would be over MAX_RENDERED_CHARS, or empty."""

    def value(part: str | int) -> str:
        return part if isinstance(part, str) else input_text if part == INPUT else texts[part]

    size = sum(len(value(p)) for p in parts)
    if size > MAX_RENDERED_CHARS:
        raise ApiError(
            400,
            context_limits.CONTEXT_EXCEEDED,
            f"stage {stage}: its prompt renders to {size} characters, over the limit of {MAX_RENDERED_CHARS}",
            param=f"stages[{stage}].prompt",
        )
    prompt = "".join(value(p) for p in parts)
    if not prompt:
        raise ApiError(
            400,
            "invalid_prompt",
            f"stage {stage}: its prompt renders empty (the earlier stages' texts it is made of are empty)",
            param=f"stages[{stage}].prompt",
        )
    return prompt


def _template_error(stage: int, reason: str) -> ApiError:
    return ApiError(422, "validation_error", f"stage {stage}: prompt: {reason}", param=f"stages[{stage}].prompt")
