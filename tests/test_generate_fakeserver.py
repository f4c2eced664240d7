"""A real HTTP server on loopback that speaks the OpenAI chat and completions APIs.

The generator's tests point the real `openai` client at it through `base_url`. Its answers are
a deterministic function of the prompt (so a resumed run can be compared with an uninterrupted
one), and a script of failure modes can be queued: 429 with Retry-After, 500, a response slower
than the client's timeout, a malformed body, a truncated list, a context-length 400, a 401.
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


class FakeOpenAI:
    """`with FakeOpenAI() as server:` then `server.base_url`; `server.script` queues failures."""

    def __init__(self, tasks_per_response: int = 8, delay_s: float = 0.0) -> None:
        self.tasks_per_response = tasks_per_response
        self.delay_s = delay_s
        self.script: list[str] = []
        self.timeout_sleep_s = 1.0
        self.die_after: int | None = None  # after this many answers, drop every connection
        self.requests = 0
        self.served = 0
        self.seen_auth: list[str] = []
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
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_mode(self) -> str:
        with self._lock:
            self.requests += 1
            return self.script.pop(0) if self.script else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, code: str | None = None, headers=None) -> None:
                body = {"error": {"message": message, "type": "test_error", "code": code, "param": None}}
                self._send(status, json.dumps(body).encode(), headers)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                server.seen_auth.append(self.headers.get("Authorization", ""))
                mode = server._next_mode()
                if server.die_after is not None and server.served >= server.die_after:
                    self.close_connection = True  # hang up without a response: a dead server
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)
                try:
                    self._answer(request, mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout mode)

            def _answer(self, request: dict, mode: str) -> None:
                chat = self.path.endswith("/chat/completions")
                if mode == "429":
                    return self._error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "0.05"})
                if mode == "500":
                    return self._error(500, "The server had an error", None)
                if mode == "401":
                    return self._error(401, "Incorrect API key provided", "invalid_api_key")
                if mode == "context":
                    return self._error(400, "This model's maximum context length is 4096 tokens. However, "
                                       "you requested 5000 tokens (1000 in the messages, 4000 in the "
                                       "completion).", "context_length_exceeded")
                if mode == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"index": 0, "mess')
                if mode == "no_choices":  # valid JSON, wrong shape
                    return self._send(200, b'{"id": "x", "object": "chat.completion", "choices": []}')
                if mode == "timeout":
                    time.sleep(server.timeout_sleep_s)
                prompt = request["messages"][-1]["content"] if chat else request["prompt"]
                korean = "지시:" in prompt
                nxt, tasks = make_tasks(prompt, server.tasks_per_response)
                text = render(nxt, tasks, korean, open_item=not chat)
                finish = "stop"
                if mode == "length":
                    text, finish = text[: int(len(text) * 0.8)], "length"
                choice = {"index": 0, "finish_reason": finish, "logprobs": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                body = {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
                        "created": 0, "model": request["model"], "choices": [choice],
                        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                                  "total_tokens": len(prompt) // 4 + len(text) // 4}}
                with server._lock:
                    server.served += 1
                self._send(200, json.dumps(body).encode())

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
