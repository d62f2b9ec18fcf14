"""Talks to `offramp-edge serve --http-listen` with the `openai` package
(pip install openai): models, a chat completion, a streamed one in another
mode, a text completion, a refused parameter; then what clients on top of the
SDK rely on: a streamed answer with its usage chunk, stop sequences, a seed
with top_p, tools left to the model, max_tokens past the context, and
errors naming their parameter; then structured output (the SDK's `.parse()`
with a Pydantic model, `json_object`), forced tool calls (required and
named, streamed), `logprobs` / `top_logprobs` and `logit_bias`.

Usage: python3 deploy/scripts/openai_check.py [BASE_URL]   (default http://127.0.0.1:8080/v1)
"""
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1", api_key="unused")
model = client.models.list().data[0].id
print("models:", model)
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32
)
print("chat:", repr(r.choices[0].message.content), r.choices[0].finish_reason, r.usage)
print("tokens by tier:", r.model_extra["offramp"]["tokens_by_tier"])
print("stream (mode split):", end=" ")
for chunk in client.chat.completions.create(
    model=model,
    stream=True,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=24,
    extra_body={"mode": "split"},
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
c = client.completions.create(model=model, prompt="The capital of Germany is", max_tokens=8)
print("completion:", repr(c.choices[0].text), c.usage)
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
except Exception as e:  # the API refuses n > 1 by name
    print("refused as expected:", type(e).__name__, e)

# What clients on top of the SDK rely on (issue 29).
print("stream with usage:", end=" ")
usage = None
for chunk in client.chat.completions.create(
    model=model,
    stream=True,
    stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=16,
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage is not None:
        usage = chunk.usage
print()
print("usage chunk:", usage)
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Count: one, two, three, four"}], max_tokens=32, stop=[","]
)
print("stop [',']:", repr(r.choices[0].message.content), r.choices[0].finish_reason)
a, b = (
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a word."}],
        max_tokens=12,
        temperature=1.0,
        top_p=0.9,
        seed=7,
    ).choices[0].message.content
    for _ in range(2)
)
print("seed 7, top_p 0.9, twice the same:", a == b, repr(a))
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    max_tokens=12,
    tools=[
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ],
)
print("tools (auto): text answer", repr(r.choices[0].message.content), "tool_calls", r.choices[0].message.tool_calls,
      "ignored", r.model_extra["offramp"]["ignored"])
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4096)
print("max_tokens 4096 (capped at the context):", r.choices[0].finish_reason, r.usage)
for name, kwargs in [
    ("response_format type yaml", {"response_format": {"type": "yaml"}}),
    ("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}),
    ("max_tokens -1", {"max_tokens": -1}),
    ("temperature 'hot'", {"temperature": "hot"}),
]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], **kwargs)
        print(name, "accepted?!")
    except Exception as e:
        body = getattr(e, "body", None) or {}
        print(f"{name}: refused, param={body.get('param')!r}:", body.get("message"))

# Structured output and tools (constrained decoding across the split).
from typing import Literal

from pydantic import BaseModel


class Capital(BaseModel):
    country: Literal["France", "Germany", "Italy"]
    city: str
    certain: bool


parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
r = parse(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
    response_format=Capital,
    max_tokens=64,
)
print(".parse(Capital):", repr(r.choices[0].message.parsed), r.choices[0].finish_reason)
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
    response_format={"type": "json_object"},
    max_tokens=48,
)
print("json_object:", repr(r.choices[0].message.content), r.choices[0].finish_reason)
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[weather],
    tool_choice="required",
    max_tokens=96,
)
if not r.choices[0].message.tool_calls:
    sys.exit(f"tool_choice required: no call ({r.choices[0].finish_reason}): {r.choices[0].message.content!r}")
call = r.choices[0].message.tool_calls[0]
print("tool_choice required:", call.function.name, call.function.arguments, r.choices[0].finish_reason)
messages = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
    {"role": "tool", "tool_call_id": call.id, "content": "18 C"},
    {"role": "user", "content": "Berlin?"},
]
name, arguments, finish = None, "", None
for chunk in client.chat.completions.create(
    model=model,
    messages=messages,
    tools=[weather],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    stream=True,
    max_tokens=96,
):
    if chunk.choices and chunk.choices[0].delta.tool_calls:
        d = chunk.choices[0].delta.tool_calls[0]
        name = d.function.name or name
        arguments += d.function.arguments or ""
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
print("named tool, streamed, after a tool turn:", name, arguments, finish)
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=6,
    logprobs=True,
    top_logprobs=3,
)
for t in r.choices[0].logprobs.content:
    print(f"  logprob {t.token!r}: {t.logprob:.3f}; top", [(a.token, round(a.logprob, 3)) for a in t.top_logprobs])
plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6)
banned = r.choices[0].logprobs.content[0]
import httpx

ids = httpx.post(str(client.base_url).replace("/v1/", "/tokenize"), json={"content": banned.token}).json()["tokens"]
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=6,
    logit_bias={str(i): -100 for i in ids},
)
print(f"logit_bias bans {banned.token!r} {ids}:", repr(plain.choices[0].message.content), "->",
      repr(r.choices[0].message.content))
