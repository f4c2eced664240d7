"""A real HTTP server on loopback that speaks the OpenAI chat, completions, files and batches APIs.

The generator's tests point the real `openai` client at it through `base_url`. Its answers are
a deterministic function of the prompt (so a resumed run can be compared with an uninterrupted
one), and a script of failure modes can be queued: 429 with Retry-After, 500, a response slower
than the client's timeout, a malformed body, a truncated list, a 401, and the context-length
errors of OpenAI, vLLM and TGI in their real wording (tests/server_errors.py).

`kind` makes it behave like a given endpoint:
- "openai": a chat/completions model that takes every parameter and reports usage;
- "reasoning": an o-series / GPT-5 model: 400 `unsupported_parameter` for `max_tokens` and
  `stop`, 400 `unsupported_value` for a non-default temperature/top_p, the first answer spends
  its whole budget on reasoning (`content: null`, `finish_reason: length`), usage has
  reasoning and cached tokens;
- "local": a llama.cpp server: no `usage`, and llama.cpp's context error when prompt + budget
  exceed `n_ctx`.
Any kind also serves the Batch API (/files, /batches): a batch completes after
`batch_polls_to_complete` polls, unless `batch_hold` is set.
The tests at the bottom check the server against the real client before anything relies on it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from fake_batch_api import FakeBatchAPI, sha
from server_errors import (
    LLAMA_CPP_CONTEXT,
    OPENAI_CONTEXT,
    OPENAI_MAX_TOKENS_UNSUPPORTED,
    OPENAI_STOP_UNSUPPORTED,
    TGI_CONTEXT,
    VLLM_CONTEXT,
    openai_unsupported_value,
)

EN_VERBS = ["Explain", "Summarize", "Classify", "Rewrite", "Translate", "List", "Compare", "Suggest",
            "Describe", "Estimate", "Outline", "Evaluate", "Recommend", "Identify", "Calculate",
            "Paraphrase", "Critique", "Plan", "Rank", "Define"]
EN_WORDS = ("apple river market teacher engine winter budget poem history garden network vaccine "
            "museum contract planet recipe bicycle election glacier violin harbor desert novel "
            "factory insurance tennis volcano library festival algorithm bakery climate theater "
            "mountain server kitchen orchestra satellite wallet journey pharmacy ocean tax chess "
            "robot coffee forest lawyer bridge painter comet sugar train village nurse castle").split()
EN_TEMPLATES = ["{0} the {1} {2} using {3} {4} and {5}.", "{0} why {1} {2} matter for {3} {4}.",
                "{0} {1} {2} {3} for a {4} {5} {6}.", "{0} a {1} {2} plan around {3} {4} {5}."]
KO_VERBS = ["설명하세요", "요약하세요", "분류하세요", "다시 쓰세요", "비교하세요", "추천하세요",
            "나열하세요", "평가하세요", "계획하세요", "정리하세요", "제안하세요", "계산하세요"]
KO_WORDS = ("사과 강 시장 선생님 엔진 겨울 예산 시 역사 정원 네트워크 백신 박물관 계약 행성 요리법 "
            "자전거 선거 빙하 바이올린 항구 사막 소설 공장 보험 테니스 화산 도서관 축제 알고리즘 "
            "빵집 기후 극장 산 서버 부엌 관현악단 위성 지갑 여행 약국").split()
KO_PARTICLES = ["에 대해", "의 장점을", "을 주제로", "와 관련해", "의 역사를"]


def make_tasks(prompt: str, count: int) -> tuple[int, list[tuple[str, str, str]]]:
    """Deterministic tasks for a prompt: mostly fresh, plus one copy of a prompt example (a
    duplicate the dedup must reject) and one blacklisted task (the filter must reject)."""
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())
    korean = "지시:" in prompt
    numbers = [int(n) for n in re.findall(r"^(\d+)\.\s*(?:Instruction|지시)\s*:", prompt, re.M)]
    nxt = max(numbers) if numbers else 1
    examples = re.findall(r"^\d+\.[ \t]*(?:Instruction|지시)[ \t]*:[ \t]*(.+)$", prompt, re.M)
    tasks = []
    for _ in range(count):
        if korean:
            words = rng.sample(KO_WORDS, 4)
            inst = f"{words[0]}과 {words[1]}{rng.choice(KO_PARTICLES)} {words[2]} 관점에서 {rng.choice(KO_VERBS)}."
            out = f"{words[3]}{rng.choice(KO_PARTICLES)} 짧게 답합니다."
            inp = "" if rng.random() < 0.5 else f"{words[2]} {words[3]} {words[0]}"
        else:
            words = rng.sample(EN_WORDS, 7)
            inst = rng.choice(EN_TEMPLATES).format(rng.choice(EN_VERBS), *words)
            out = f"The {words[0]} shapes the {words[4]} through {words[2]}."
            inp = "" if rng.random() < 0.5 else f"Notes: {words[4]}, {words[1]}, {words[3]}."
        tasks.append((inst, inp, out))
    if examples and count >= 3:
        tasks[1] = (examples[0].strip().rstrip(":"), "", "A repeated task.")
        tasks[2] = ("이 사진을 보고 분위기를 설명하세요." if korean
                    else "Describe the image attached to this message in detail.", "", "It shows a park.")
    return nxt, tasks


def render(nxt: int, tasks: list[tuple[str, str, str]], korean: bool, open_item: bool) -> str:
    """The list as a model writes it; with `open_item` the first item continues the prompt's
    open "N. Instruction:" label (completions), otherwise every item is numbered (chat)."""
    labels = ("지시", "입력", "출력", "<입력 없음>") if korean else ("Instruction", "Input", "Output", "<noinput>")
    parts = []
    for k, (inst, inp, out) in enumerate(tasks):
        head = f" {inst}" if open_item and k == 0 else f"{nxt + k}. {labels[0]}: {inst}"
        parts.append(f"{head}\n{labels[1]}: {inp or labels[3]}\n{labels[2]}: {out}\n")
    return "\n".join(parts)


def openai_error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class FakeOpenAI(FakeBatchAPI):
    """`with FakeOpenAI() as server:` then `server.base_url`; `server.script` queues failures."""

    def __init__(self, tasks_per_response: int = 8, delay_s: float = 0.0, kind: str = "openai",
                 n_ctx: int = 2048) -> None:
        self.tasks_per_response = tasks_per_response
        self.delay_s = delay_s
        self.kind = kind
        self.n_ctx = n_ctx  # local kind: the context size
        self.script: list[str] = []
        self.timeout_sleep_s = 1.0
        self.die_after: int | None = None  # after this many answers, drop every connection
        self.hold_after: int | None = None  # after this many answers, hold requests unanswered
        self.released = threading.Event()
        self.requests = 0
        self.served = 0
        self.seen_auth: list[str] = []
        self.bodies: list[dict] = []  # every chat/completions request body, in arrival order
        self.rejected: list[str] = []  # parameters refused with a 400 (reasoning kind)
        self.answered: list[str] = []  # sha of the prompt of every answer with content (paid)
        self.billed = {"prompt": 0, "completion": 0, "cached": 0, "reasoning": 0}
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_prompts: dict[str, list[str]] = {}  # batch id -> sha of each prompt in it
        self.batch_polls_to_complete = 2
        self.batch_hold = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_mode(self) -> str:
        with self._lock:
            self.requests += 1
            return self.script.pop(0) if self.script else "ok"

    # -- chat and completions ------------------------------------------------------------------

    def _refusal(self, request: dict, chat: bool) -> dict | None:
        """What a reasoning model says to parameters it does not take."""
        if self.kind != "reasoning" or not chat:
            return None
        if "max_tokens" in request:
            return openai_error(OPENAI_MAX_TOKENS_UNSUPPORTED, "invalid_request_error", "max_tokens",
                                "unsupported_parameter")
        if "stop" in request:
            return openai_error(OPENAI_STOP_UNSUPPORTED, "invalid_request_error", "stop", "unsupported_parameter")
        for name in ("temperature", "top_p"):
            if name in request and request[name] != 1:
                return openai_error(openai_unsupported_value(name, request[name]), "invalid_request_error",
                                    name, "unsupported_value")
        return None

    def respond(self, path: str, request: dict, mode: str = "ok") -> tuple[int, dict]:
        """(status, body) for one chat/completions request; counts what it bills."""
        chat = path.endswith("/chat/completions")
        with self._lock:
            self.bodies.append(request)
        refusal = self._refusal(request, chat)
        if refusal is not None:
            with self._lock:
                self.rejected.append(refusal["error"]["param"])
            return 400, refusal
        prompt = request["messages"][-1]["content"] if chat else request["prompt"]
        budget = request.get("max_completion_tokens") or request.get("max_tokens") or 0
        prompt_tokens = len(prompt) // 4
        if self.kind == "local" and prompt_tokens + budget > self.n_ctx:
            return 400, {"error": {"code": 400, "message": LLAMA_CPP_CONTEXT, "type": "exceed_context_size_error",
                                   "n_prompt_tokens": prompt_tokens, "n_ctx": self.n_ctx}}
        korean = "지시:" in prompt
        nxt, tasks = make_tasks(prompt, self.tasks_per_response)
        text = render(nxt, tasks, korean, open_item=not chat)
        finish, reasoning, cached = "stop", 0, 0
        if mode == "length":
            text, finish = text[: int(len(text) * 0.8)], "length"
        if self.kind == "reasoning":
            cached = prompt_tokens // 4
            with self._lock:
                first = not self.answered and self.billed["reasoning"] == 0
            if first:  # the whole budget goes to reasoning; nothing visible comes back
                text, finish, reasoning = None, "length", budget
            else:
                reasoning = 64
        completion_tokens = reasoning + (len(text) // 4 if text else 0)
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
                "created": 0, "model": request["model"], "choices": [choice]}
        if self.kind != "local":  # llama.cpp-like servers may send no usage at all
            body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
            if self.kind == "reasoning":
                body["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
                body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        with self._lock:
            self.served += 1
            if text:
                self.answered.append(sha(prompt))
            for k, v in (("prompt", prompt_tokens), ("completion", completion_tokens), ("cached", cached),
                         ("reasoning", reasoning)):
                self.billed[k] += v
        return 200, body

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body, headers: dict | None = None) -> None:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
                    return self._send(200, server.files[m.group(1)]["data"].encode("utf-8"))
                if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
                    return self._send(200, server._batch_view(m.group(1), poll=True))
                if path == "/v1/batches":
                    data = [server._batch_view(b, poll=False) for b in reversed(list(server.batches))]
                    return self._send(200, {"object": "list", "data": data, "has_more": False})
                self._send(404, openai_error("not found", "invalid_request_error", None, None))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                server.seen_auth.append(self.headers.get("Authorization", ""))
                if self.path == "/v1/files":
                    return self._send(200, server._upload(self.headers["Content-Type"], raw))
                if self.path == "/v1/batches":
                    return self._send(200, server._create_batch(json.loads(raw)))
                mode = server._next_mode()
                if server.die_after is not None and server.served >= server.die_after:
                    self.close_connection = True  # hang up without a response: a dead server
                    return
                if server.hold_after is not None and server.served >= server.hold_after:
                    server.released.wait(60)  # never answered: nothing is paid for
                    self.close_connection = True
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)
                try:
                    self._answer(json.loads(raw), mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout mode)

            def _answer(self, request: dict, mode: str) -> None:
                if mode == "429":
                    return self._send(429, openai_error("Rate limit reached", "requests", None, "rate_limit_exceeded"),
                                      {"Retry-After": "0.05"})
                if mode == "500":
                    return self._send(500, openai_error("The server had an error", "server_error", None, None))
                if mode == "401":
                    return self._send(401, openai_error("Incorrect API key provided", "invalid_request_error",
                                                        None, "invalid_api_key"))
                if mode == "context":
                    return self._send(400, openai_error(OPENAI_CONTEXT, "invalid_request_error", "messages",
                                                        "context_length_exceeded"))
                if mode == "vllm_context":
                    return self._send(400, {"error": {"message": VLLM_CONTEXT, "type": "BadRequestError",
                                                      "param": None, "code": 400}})
                if mode == "tgi_context":
                    return self._send(422, {"error": TGI_CONTEXT, "error_type": "validation"})
                if mode == "422":
                    return self._send(422, {"error": "Input validation error: `temperature` must be strictly "
                                                     "positive", "error_type": "validation"})
                if mode == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"index": 0, "mess')
                if mode == "no_choices":  # valid JSON, wrong shape
                    return self._send(200, b'{"id": "x", "object": "chat.completion", "choices": []}')
                if mode == "timeout":
                    time.sleep(server.timeout_sleep_s)
                self._send(*server.respond(self.path, request, mode))

        return Handler


# -- the server itself, checked against the real client -------------------------------------------


def test_real_openai_client_reads_chat_and_completions_from_the_fake_server():
    with FakeOpenAI(tasks_per_response=4) as server:
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
        chat = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "1. Instruction: Say hi.\n2. Instruction:"}])
        assert chat.choices[0].finish_reason == "stop"
        assert chat.choices[0].message.content.startswith("2. Instruction: ")
        assert chat.usage.prompt_tokens > 0
        comp = client.completions.create(model="m", prompt="1. Instruction: Say hi.\n2. Instruction:")
        assert not comp.choices[0].text.startswith("2.")  # continues the open item
        assert comp.choices[0].text.count("Output:") == 4
        assert server.seen_auth == ["Bearer sk-test", "Bearer sk-test"]


def test_fake_server_answers_are_a_function_of_the_prompt():
    assert make_tasks("1. Instruction: a\n2. Instruction:", 5) == make_tasks("1. Instruction: a\n2. Instruction:", 5)
    assert make_tasks("1. Instruction: a\n2. Instruction:", 5) != make_tasks("1. Instruction: b\n2. Instruction:", 5)


def test_reasoning_kind_answers_with_openais_real_error_bodies():
    with FakeOpenAI(tasks_per_response=2, kind="reasoning") as server:
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
        messages = [{"role": "user", "content": "1. Instruction: Say hi.\n2. Instruction:"}]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="o4-mini", messages=messages, max_tokens=100)
        assert info.value.body == {"message": OPENAI_MAX_TOKENS_UNSUPPORTED, "type": "invalid_request_error",
                                   "param": "max_tokens", "code": "unsupported_parameter"}
        with pytest.raises(openai.BadRequestError, match="does not support 0.7 with this model"):
            client.chat.completions.create(model="o4-mini", messages=messages, temperature=0.7)
        first = client.chat.completions.create(model="o4-mini", messages=messages, max_completion_tokens=100)
        assert first.choices[0].message.content is None and first.choices[0].finish_reason == "length"
        assert first.usage.completion_tokens_details.reasoning_tokens == 100
        second = client.chat.completions.create(model="o4-mini", messages=messages, max_completion_tokens=100)
        assert second.choices[0].message.content.startswith("2. Instruction: ")


def test_local_kind_sends_no_usage_and_llama_cpps_context_error():
    with FakeOpenAI(tasks_per_response=2, kind="local", n_ctx=64) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0)
        ok = client.completions.create(model="m", prompt="1. Instruction: Say hi.\n2. Instruction:", max_tokens=8)
        assert ok.usage is None and ok.choices[0].text
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="m", prompt="1. Instruction: Say hi.\n2. Instruction:", max_tokens=60)
        assert info.value.body["message"] == LLAMA_CPP_CONTEXT and info.value.body["n_ctx"] == 64


def test_batch_endpoints_round_trip_through_the_real_client():
    with FakeOpenAI(tasks_per_response=2) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0)
        line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "1. Instruction: a\n2. Instruction:"}]}}
        f = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode(), "application/jsonl"),
                                purpose="batch")
        job = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert job.status == "validating"
        assert client.batches.retrieve(job.id).status == "in_progress"
        done = client.batches.retrieve(job.id)
        assert done.status == "completed" and done.request_counts.completed == 1
        out = json.loads(client.files.content(done.output_file_id).text)
        assert out["custom_id"] == "r1" and out["response"]["status_code"] == 200
        assert out["response"]["body"]["choices"][0]["message"]["content"].startswith("2. Instruction:")
        assert [b.id for b in client.batches.list().data] == [job.id]
