"""What one unpartitioned Hugging Face process generates greedily: the text every
API of the stack must reproduce exactly (stopping at EOS as the stack does)."""

from __future__ import annotations

import torch


def hf_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=50256)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def hf_text_of(hf, model_name: str, prompt: str, max_new_tokens: int) -> str:
    """`hf_text` with `hf` = (a tokenizer the models share, {served name: model})."""
    tokenizer, models = hf
    return hf_text(models[model_name], tokenizer, prompt, max_new_tokens)
