"""The OpenAI-compatible API (/v1): protocol (bodies), serving (requests onto
GenerationService), routes (FastAPI), errors (OpenAI's error shape)."""
