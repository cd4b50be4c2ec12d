"""Runs under openai==0.28.1 (its own venv): `python legacy_client.py BASE_URL KEY MODE PROMPT`.

Modes: stream, plain (chat), image (openai.Image.create, n=2). PROMPT may be a JSON list of
messages (a conversation) instead of one user message. Prints one JSON line:
{"content": ..., "chunks": n}, {"urls": [...]} or {"error": "<exception class name>", "status": ...}.
"""

import json
import sys

import openai

base_url, key, mode, prompt = sys.argv[1:5]
openai.api_base = base_url + "/v1"
openai.api_key = key
messages = json.loads(prompt) if prompt.startswith("[") else [{"role": "user", "content": prompt}]
try:
    if mode == "stream":
        content, chunks = "", 0
        response = openai.ChatCompletion.create(model="Kwai-Kolors/Kolors", messages=messages, stream=True, request_timeout=60)
        for chunk in response:
            chunks += 1
            if hasattr(chunk.choices[0].delta, "content"):
                content += chunk.choices[0].delta.content
        print(json.dumps({"content": content, "chunks": chunks}))
    elif mode == "image":
        response = openai.Image.create(prompt=prompt, n=2, size="1024x1024", request_timeout=60)
        print(json.dumps({"urls": [item["url"] for item in response["data"]]}))
    else:
        response = openai.ChatCompletion.create(model="Kwai-Kolors/Kolors", messages=messages, request_timeout=60)
        print(json.dumps({"content": response.choices[0].message.content, "chunks": 0}))
except openai.error.OpenAIError as exc:
    print(json.dumps({"error": type(exc).__name__, "status": exc.http_status}))
