"""Request bodies of the OpenAI-compatible endpoints: parsed and bounded before any work.

Every field OpenAI documents for the two endpoints is accepted; fields this server cannot honour
(n > 1, logprobs, echo, penalties, tools, ...) are refused with a 400 naming the field rather than
silently ignored; unknown fields are refused too (OpenAI: "Unrecognized request argument").
Extension: `specstop: {"policy": "fixed:4" | "auto" | "target-only" | ..., "deadline_s": 30}`.

Chat prompts: the bundled byte-level pair has no chat template, so messages are rendered as
plain text, one block per message, `"<Role>: <content>\\n"`, ending with `"Assistant:"` (the
model continues the assistant's turn). A tokenizer with a chat template uses it instead
(`apply_chat_template(..., add_generation_prompt=True)`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError,
                      field_validator)

from pipeline.http.errors import bad_request

INT64 = (1 << 63) - 1
MAX_STOP = 4            # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_MESSAGES = 256
MAX_TEXT = 1 << 20      # characters in one prompt / message (the gateway's own bound is checked before tokenizing)
MAX_PARAM = 256         # characters of a field name quoted back in an error

Num = StrictFloat | StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Extension(_Body):
    policy: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    deadline_s: Annotated[Num, Field(gt=0, le=86400)] | None = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


def _zero(name: str):
    def check(v):
        if v not in (None, 0, 0.0):
            raise ValueError(f"{name} is not supported (only 0)")
        return v
    return check


class _Common(_Body):
    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Num, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Num, Field(gt=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-INT64 - 1, le=INT64)] | None = None
    stop: Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_CHARS)] | \
        Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                  Field(max_length=MAX_STOP)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Num | None = None
    frequency_penalty: Num | None = None
    logit_bias: dict[str, Any] | None = None
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    specstop: Extension | None = None

    _pp = field_validator("presence_penalty")(_zero("presence_penalty"))
    _fp = field_validator("frequency_penalty")(_zero("frequency_penalty"))

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported")
        return v

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Common):
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT)] | \
        Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT)]],
                  Field(min_length=1, max_length=1)]
    echo: StrictBool | None = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=0)] | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    suffix: None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(_Body):
    type: Literal["text"]
    text: Annotated[StrictStr, Field(max_length=MAX_TEXT)]


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[StrictStr, Field(max_length=MAX_TEXT)] | \
        Annotated[list[TextPart], Field(min_length=1, max_length=64)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(_Body):
    type: Literal["text"]


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    response_format: ResponseFormat | None = None

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render_chat(messages: list[Message], tokenizer: Any = None) -> str:
    """The prompt a chat request generates from (see the module docstring)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": m.role, "content": m.text} for m in messages],
                                             tokenize=False, add_generation_prompt=True)
    return "".join(f"{ROLE_NAMES[m.role]}: {m.text}\n" for m in messages) + "Assistant:"


def param_of(loc: tuple) -> str:
    """pydantic's error location -> OpenAI's `param` (`messages[0].content`); union branch names dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("str", "list[", "int", "float", "bool", "function-", "constrained-"))
                                        or "[" in part or part in ("Extension", "StreamOptions", "TextPart",
                                                                   "Message", "ResponseFormat", "literal")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def validate(model: type, body: dict):
    """`body` as `model`, or a 400 naming the first bad field (with up to three of its errors)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        # a union field reports one error per branch: the branch whose type matched (a constraint failed) says more
        errs = [e for e in errs if not e["type"].endswith("_type")] or errs
        first = param_of(errs[0]["loc"]) or None
        msgs = [e["msg"][:200] for e in errs if (param_of(e["loc"]) or None) == first][:3]
        param = first if first is None or len(first) <= MAX_PARAM else first[:MAX_PARAM] + "..."  # a client's key
        raise bad_request(f"{param or 'body'}: {'; '.join(msgs)}", param) from None
