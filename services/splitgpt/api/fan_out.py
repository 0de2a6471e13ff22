"""How many generations one request may ask for: its prompts, and its prompts times `n`.

Without a cap a 1 MiB /v1/completions body holds hundreds of thousands of
one-token prompts, and `n` multiplies them: one request could fill the
coordinator's queue for every other key. Counted from the parsed body, before
anything is tokenized or queued; the answer is a 400 naming the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError


def prompt_count(prompt: str | list) -> int:
    """The prompts in /v1/completions' `prompt`: a string, a list of strings, one
    list of token ids, or a list of such lists."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return 1
    return len(prompt)


@dataclass(frozen=True)
class FanOut:
    max_prompts: int
    max_generations: int

    def generations(self, prompts: int, n: int | None) -> int:
        """prompts x n, or a 400 where either is over its cap."""
        if prompts > self.max_prompts:
            raise ApiError(
                400, "too_many_prompts", f"{prompts} prompts in one request: at most {self.max_prompts} a request", "prompt"
            )
        total = prompts * (n or 1)
        if total > self.max_generations:
            raise ApiError(
                400,
                "too_many_generations",
                f"{prompts} prompt(s) x n={n or 1} is {total} generations: at most {self.max_generations} a request",
                "n",
            )
        return total
