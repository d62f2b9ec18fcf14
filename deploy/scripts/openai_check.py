"""Talks to `offramp-edge serve --http-listen` with the `openai` package
(pip install openai): models, a chat completion, a streamed one in another
mode, a text completion, and a refused parameter.

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
