"""OpenAI-compatible HTTP serving (`specstop gateway`): request bodies (`requests`), errors (`errors`), the
NATS side (`gateway`), the Starlette app (`app`) and the uvicorn process (`serve`)."""
