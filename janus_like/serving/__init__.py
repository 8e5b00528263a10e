"""Serving: the OpenAI-compatible HTTP server (`janus-like serve`). Nothing is imported here, so
that the command line's --help does not load FastAPI."""
