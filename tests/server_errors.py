"""Real error messages of real servers, verbatim, with where each was seen.

The test server sends these, and the client's recognisers are tested on them, so a change of
wording upstream shows up as a failing test here rather than as a run that ends with exit 2.
"""

# OpenAI, context length (also llama-cpp-python's OpenAI-compatible server and older vLLM, which
# copy the wording). Seen in vllm-project/vllm#20409 and countless client issues.
OPENAI_CONTEXT = ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                  "(1000 in the messages, 4000 in the completion). Please reduce the length of the messages "
                  "or completion.")

# vLLM, newer wording (renderers/params.py, quoted in several client test suites and issues):
# "at least" because the prompt was only partly tokenized.
VLLM_CONTEXT = ("This model's maximum context length is 8192 tokens. However, you requested 4096 output "
                "tokens and your prompt contains at least 4097 input tokens, for a total of at least 8193 "
                "tokens. Please reduce the length of the input prompt or the number of requested output "
                "tokens.")

# vLLM, the wording in between (seen in a deployment's 400 body, vLLM OpenAI server 2025).
VLLM_CONTEXT_MID = ("'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context "
                    "length is 4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None")

# llama.cpp server (ggml-org/llama.cpp#15780, error type exceed_context_size_error; the body also
# carries n_prompt_tokens and n_ctx as fields).
LLAMA_CPP_CONTEXT = ("the request exceeds the available context size. try increasing the context size or "
                     "enable context shift")

# Hugging Face text-generation-inference, HTTP 422 with {"error": ..., "error_type": "validation"}
# (huggingface/text-generation-inference#628).
TGI_CONTEXT = ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 1244 "
               "`inputs` tokens and 1000 `max_new_tokens`")

# OpenAI reasoning models (o-series, GPT-5 family): HTTP 400, type invalid_request_error.
OPENAI_MAX_TOKENS_UNSUPPORTED = ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                 "Use 'max_completion_tokens' instead.")  # code unsupported_parameter
OPENAI_STOP_UNSUPPORTED = "Unsupported parameter: 'stop' is not supported with this model."


def openai_unsupported_value(param: str, value: object) -> str:
    """e.g. "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default
    (1) value is supported." (code unsupported_value, param temperature)."""
    return (f"Unsupported value: '{param}' does not support {value} with this model. "
            f"Only the default (1) value is supported.")
