"""Request bodies that fit the endpoint in use, and reading what it answers or objects to.

Why a separate, adaptable request shape: OpenAI's reasoning models reject `max_tokens`, `stop`
and any non-default sampling with a 400; vLLM, llama.cpp and TGI each word "too long" their own
way; local servers may omit `usage`. Only parameters that are set are sent. When the server
names a parameter it does not support, the shape adapts once (switch `max_tokens` to
`max_completion_tokens` or back, drop a sampling parameter); the pipeline journals every change
so a resumed run starts from the adapted shape instead of paying to learn it again.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass

from generate.config import GenerateConfig
from generate.pricing import is_openai

TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
DROPPABLE = ("temperature", "top_p", "stop", "reasoning_effort")
CONTEXT_MARGIN = 16  # tokens left free when the budget is set from the server's own numbers


@dataclass
class Completion:
    """One answer, reduced to what the pipeline needs; token counts as billed."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # part of prompt_tokens
    reasoning_tokens: int = 0  # part of completion_tokens
    estimated: bool = False  # the server sent no usage: ~4 characters per token
    empty_reason: str | None = None  # "reasoning_exhausted": the whole budget went to reasoning

    def tokens(self) -> dict:
        return {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                "cached": self.cached_tokens, "reasoning": self.reasoning_tokens}

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> Completion:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in rec.items() if k in names})


def completion_from_body(body: dict, chat: bool, prompt: str) -> Completion:
    """Read a chat or completions response body; KeyError/IndexError/ValueError if malformed."""
    choice = body["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    finish = choice.get("finish_reason")
    empty_reason = None
    if text is None or (text == "" and finish == "length"):
        if finish != "length":
            raise ValueError("response has no text")
        # A reasoning model spent the whole budget thinking: paid for, nothing to parse.
        text, empty_reason = "", "reasoning_exhausted"
    if not isinstance(text, str):
        raise ValueError("response text is not a string")
    usage = body.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        details_in = usage.get("prompt_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or {}
        return Completion(text, finish, usage["prompt_tokens"], int(usage.get("completion_tokens") or 0),
                          int(details_in.get("cached_tokens") or 0),
                          int(details_out.get("reasoning_tokens") or 0), False, empty_reason)
    # No usage (llama.cpp variants, some proxies): estimate ~4 characters per token, and say so.
    return Completion(text, finish, len(prompt) // 4, len(text) // 4, 0, 0, True, empty_reason)


# -- errors --------------------------------------------------------------------------------------

_CONTEXT_RE = re.compile(
    r"context[ _]length|maximum context|context window|context size|too many tokens"
    r"|`inputs` tokens \+ `max_new_tokens` must be", re.I)
_LIMIT_RES = [re.compile(p) for p in (
    r"maximum context length is (\d+)",  # OpenAI, vLLM, llama-cpp-python
    r"`inputs` tokens \+ `max_new_tokens` must be <= (\d+)",  # TGI
    r"available context size \((\d+) tokens\)",  # llama.cpp, newer wording
)]
_PROMPT_RES = [re.compile(p) for p in (
    r"(\d+) in the messages", r"(\d+) in the prompt",  # OpenAI (older), vLLM (older)
    r"your messages resulted in (\d+) tokens",  # OpenAI
    r"your request has (\d+) input tokens",  # vLLM
    r"your prompt contains (?:at least )?(\d+) input tokens",  # vLLM, newer
    r"Given: (\d+) `inputs` tokens",  # TGI
)]


def error_text(error: Exception) -> str:
    """The server's own message: OpenAI-shaped `{"error": {"message"}}`, TGI's `{"error": "..."}`."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body:
        return body
    return str(getattr(error, "message", error))


def is_context_error(message: str, body: object) -> bool:
    if isinstance(body, dict) and (body.get("code") == "context_length_exceeded"
                                   or body.get("type") == "exceed_context_size_error"):
        return True
    return bool(_CONTEXT_RE.search(message))


def fitting_budget(message: str, body: object, current: int) -> int:
    """A budget that fits, from the server's numbers (context size, prompt tokens); else half."""
    body = body if isinstance(body, dict) else {}
    limit = next((int(m.group(1)) for r in _LIMIT_RES if (m := r.search(message))), None)
    prompt = next((int(m.group(1)) for r in _PROMPT_RES if (m := r.search(message))), None)
    if isinstance(body.get("n_ctx"), int) and isinstance(body.get("n_prompt_tokens"), int):
        limit, prompt = body["n_ctx"], body["n_prompt_tokens"]  # llama.cpp says it in fields
    if limit is not None and prompt is not None:
        return min(current - 1, limit - prompt - CONTEXT_MARGIN)
    return current // 2


def unsupported_parameter(message: str, body: object) -> str | None:
    """The parameter a 400 says is unsupported (or has an unsupported value), if it says one."""
    body = body if isinstance(body, dict) else {}
    if body.get("code") in ("unsupported_parameter", "unsupported_value") and isinstance(body.get("param"), str):
        return body["param"]
    m = re.search(r"Unsupported (?:parameter|value): '(\w+)'", message)
    return m.group(1) if m else None


# -- the request shape ---------------------------------------------------------------------------


class Endpoint:
    """Builds request bodies; thread-safe; its state is the list of adaptations so far."""

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        r = config.request
        param = r.token_param
        if param == "auto":
            on_openai_chat = config.api in ("chat", "batch") and is_openai(config.base_url)
            param = "max_completion_tokens" if on_openai_chat else "max_tokens"
        if config.api == "completions":
            param = "max_tokens"  # the legacy endpoint knows nothing else
        self.token_param = param
        self.budget = r.max_tokens
        self.dropped: set[str] = set()
        self._switched = False
        self._lock = threading.Lock()

    @property
    def chat(self) -> bool:
        return self.config.api in ("chat", "batch")

    def body(self, prompt: str) -> dict:
        r = self.config.request
        with self._lock:
            body: dict = {"model": self.config.model}
            if self.chat:
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            body[self.token_param] = self.budget
            optional = {"temperature": r.temperature, "top_p": r.top_p, "stop": r.stop or None,
                        "reasoning_effort": r.reasoning_effort if self.chat else None}
            for name, value in optional.items():
                if value is not None and name not in self.dropped:
                    body[name] = value
            return body

    def apply(self, change: dict) -> None:
        """Replay one adaptation (from this run or from the journal of an earlier one)."""
        with self._lock:
            if "token_param" in change:
                self.token_param = change["token_param"]
                self._switched = True
            if "drop" in change:
                self.dropped.add(change["drop"])
            if "budget" in change:
                self.budget = change["budget"]

    def adapt_unsupported(self, param: str, sent: dict) -> dict | None:
        """The change that answers "parameter `param` unsupported" for a request `sent`:
        a new change, {} when another thread already made it (just resend), None if none helps."""
        with self._lock:
            if param not in sent:
                return None
            if param in TOKEN_PARAMS:
                if param != self.token_param:
                    return {}
                if self._switched:
                    return None  # both names refused: nothing left to try
                other = TOKEN_PARAMS[1 - TOKEN_PARAMS.index(param)]
                return {"token_param": other}
            if param in DROPPABLE:
                return {} if param in self.dropped else {"drop": param}
            return None

    def set_budget(self, budget: int) -> dict | None:
        with self._lock:
            return None if budget == self.budget else {"budget": budget}

    def current_budget(self) -> int:
        with self._lock:
            return self.budget
