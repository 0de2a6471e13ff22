"""splitgpt: GPT-2 with its transformer blocks partitioned across gRPC nodes."""

__version__ = "0.1.0"
