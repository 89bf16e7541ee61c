"""Errors the model layer raises with a one-line, user-facing message."""


class ModelError(ValueError):
    """A model or tokenizer could not be loaded or used as asked."""
