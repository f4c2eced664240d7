"""A judge on the loopback fake server: FakeOpenAI (tests/test_generate_fakeserver.py, with its
Batch API, failure scripts and hold/die modes) whose chat answers are verdicts on the two outputs
of the project's judge prompt, decided by a policy that the tests know the truth of:

- "first": always "Output (a)" (pure position bias);
- "longer": prefers output (a) with probability sigmoid((len(a) - len(b)) / LENGTH_SCALE), the
  coin a hash of the prompt (pure length bias: equally good outputs otherwise);
- any policy: an instruction containing "#garble" gets one of GARBLED instead of a verdict.
`judged` counts the answers per prompt digest: what the judge was paid for.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

from test_generate_fakeserver import FakeOpenAI

LENGTH_SCALE = 100.0  # characters
GARBLED = ["I cannot decide between them.", "Output (a) or Output (b)", "Output (c)", "Output (a) is better"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def outputs(prompt: str) -> tuple[str, str, str]:
    """(instruction, output a, output b) as the judge prompt shows them."""
    get = [re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt, re.S).group(1)
           for tag in ("instruction", "output_a", "output_b")]
    return get[0], get[1], get[2]


def coin(prompt: str) -> float:
    """A uniform number in [0, 1) that is a function of the prompt."""
    return int(sha("coin:" + prompt)[:12], 16) / 16 ** 12


class FakeJudge(FakeOpenAI):
    def __init__(self, policy: str = "first", **kwargs) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.judged: Counter = Counter()

    def verdict(self, prompt: str) -> str:
        instruction, a, b = outputs(prompt)
        if "#garble" in instruction:
            return GARBLED[int(sha(prompt)[:4], 16) % len(GARBLED)]
        if self.policy == "first":
            pick = "a"
        else:
            p_a = 1.0 / (1.0 + math.exp(-(len(a) - len(b)) / LENGTH_SCALE))
            pick = "a" if coin(prompt) < p_a else "b"
        # An explanation first, and the verdict line in one of the forms a model writes it.
        return f"Both outputs address the instruction.\n\n{'**Output (a)**' if pick == 'a' else 'Output (b).'}"

    def respond(self, path: str, request: dict, mode: str = "ok") -> tuple[int, dict]:
        with self._lock:
            self.bodies.append(request)
        prompt = request["messages"][-1]["content"]
        text = self.verdict(prompt)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self._lock:
            self.served += 1
            self.judged[sha(prompt)] += 1
            self.billed["prompt"] += usage["prompt_tokens"]
            self.billed["completion"] += usage["completion_tokens"]
        return 200, {"id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": request["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": text}}], "usage": usage}
