"""Talks to `offramp-edge serve --http-listen` with the `openai` package
(pip install openai): models, a chat completion, a streamed one in another
mode, a text completion, a refused parameter; then what clients on top of the
SDK rely on: a streamed answer with its usage chunk, stop sequences, a seed
with top_p, tools left to the model, max_tokens past the context, and
errors naming their parameter (structured output is refused by name).

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
    ("response_format json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
    ("max_tokens -1", {"max_tokens": -1}),
    ("temperature 'hot'", {"temperature": "hot"}),
]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], **kwargs)
        print(name, "accepted?!")
    except Exception as e:
        body = getattr(e, "body", None) or {}
        print(f"{name}: refused, param={body.get('param')!r}:", body.get("message"))
