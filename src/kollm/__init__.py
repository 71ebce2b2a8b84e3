"""kollm: an on-premise, Korean-first toolkit for running open-source LLMs in-house."""

__version__ = "0.1.0"
