"""Drive Ballast with the official `openai` Python client.

Usage: openai_client.py BASE_URL SCENARIO   (BALLAST_TEST_CA=ca.pem for https)
Prints one JSON line describing what the client saw; the Rust end-to-end
tests assert on it.
"""

import json
import os
import sys

import openai


def main() -> None:
    base_url, scenario = sys.argv[1], sys.argv[2]
    # BALLAST_TEST_CA: the gateway speaks TLS with a certificate from this CA.
    ca = os.environ.get("BALLAST_TEST_CA")
    http_client = openai.DefaultHttpxClient(verify=ca) if ca else None
    # BALLAST_TEST_KEY: the client key, for routes that require one.
    api_key = os.environ.get("BALLAST_TEST_KEY", "unused")
    client = openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=30, http_client=http_client
    )
    messages = [{"role": "user", "content": "hi"}]
    out = {"scenario": scenario}
    try:
        if scenario == "chat":
            r = client.chat.completions.create(model="sim-model", messages=messages)
            out["content"] = r.choices[0].message.content
        elif scenario == "stream":
            parts, ids, finish = [], [], []
            for chunk in client.chat.completions.create(model="sim-model", messages=messages, stream=True):
                if chunk.id not in ids:
                    ids.append(chunk.id)
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish.append(chunk.choices[0].finish_reason)
            out["content"] = "".join(parts)
            out["chunks"] = len(parts)
            out["ids"] = ids
            out["finish"] = finish
        elif scenario == "rate_limited":
            # The first fits the key's limit; the second must raise the
            # SDK's RateLimitError, with what a client backs off by.
            client.chat.completions.create(model="sim-model", messages=messages)
            try:
                client.chat.completions.create(model="sim-model", messages=messages)
                out["second"] = "accepted"
            except openai.RateLimitError as e:
                out["second"] = "RateLimitError"
                out["status"] = e.status_code
                out["retry_after"] = e.response.headers.get("retry-after")
                out["remaining"] = e.response.headers.get("x-ratelimit-remaining-requests")
                out["code"] = e.code
        elif scenario == "unauthorized":
            try:
                client.chat.completions.create(model="sim-model", messages=messages)
                out["first"] = "accepted"
            except openai.AuthenticationError as e:
                out["first"] = "AuthenticationError"
                out["code"] = e.code
        elif scenario == "malformed":
            # The SDK does not check types; the gateway must.
            client.chat.completions.create(model="sim-model", messages="hi")
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        out["ok"] = True
    except openai.APIError as e:
        out["ok"] = False
        out["error_type"] = type(e).__name__
        out["message"] = str(e)
        body = getattr(e, "body", None)
        out["code"] = body.get("code") if isinstance(body, dict) else None
        out["param"] = body.get("param") if isinstance(body, dict) else None
        out["status"] = getattr(e, "status_code", None)
    except Exception as e:  # noqa: BLE001 - report anything else as is
        out["ok"] = False
        out["error_type"] = type(e).__name__
        out["message"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
