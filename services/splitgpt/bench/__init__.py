"""`splitgpt bench`: the stack against one Hugging Face process, measured in one run."""
