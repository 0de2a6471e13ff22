"""The HTTP API gateway (FastAPI) over the tokenizer and coordinator services."""
