"""Scripted users of a served kollm model, for docs/tutorials/feedback-loop-month.md.

Each user asks for the summary of one dialogue of data/sample/dialogsum_train.jsonl through
the OpenAI-compatible API and rates the answer as RATINGS scripts it, one letter a user:
`g` good, `b` bad with the dialogue's gold summary as the correction (POST /v1/feedback).
A real month has people instead of letters; the server and the loop see the same requests.

    python examples/feedback_users.py --url http://127.0.0.1:8032 --expect kollm-demo:1 bbgg
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

DIALOGUES = Path("data/sample/dialogsum_train.jsonl")


def wait_for(http: httpx.Client, model: str, version: str, seconds: float = 120) -> None:
    """Until the server answers with `version` (it follows a moved alias within seconds)."""
    deadline = time.monotonic() + seconds
    while http.get("/health").json().get("models", {}).get(model) != version:
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not serve {version} within {seconds:.0f} s")
        time.sleep(0.5)


def ask_and_rate(http: httpx.Client, model: str, row: dict, bad: bool) -> str:
    """One user: a question, then a rating of the answer; returns the version that answered."""
    chat = http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": row["dialogue"]}],
            "max_tokens": 60,
            "temperature": 0,
        },
    )
    chat.raise_for_status()
    answer = chat.json()
    feedback = {"response_id": answer["id"], "rating": "bad" if bad else "good"}
    if bad:
        feedback |= {"categories": ["hallucination"], "correction": row["summary"]}
    http.post("/v1/feedback", json=feedback).raise_for_status()
    return answer["model_version"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ratings", help="one letter a user: g good, b bad (with a correction)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="kollm-demo")
    parser.add_argument("--expect", required=True, help="the version that should answer")
    parser.add_argument("--skip", type=int, default=0, help="start at this dialogue")
    args = parser.parse_args()
    lines = DIALOGUES.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[args.skip : args.skip + len(args.ratings)]]
    with httpx.Client(base_url=args.url, timeout=120) as http:
        wait_for(http, args.model, args.expect)
        rated = zip(rows, args.ratings, strict=True)
        versions = {ask_and_rate(http, args.model, row, letter == "b") for row, letter in rated}
    bad = args.ratings.count("b")
    said = (
        f"{len(rows)} answers by {', '.join(sorted(versions))} rated: {bad} bad, with corrections"
    )
    print(said)  # noqa: T201 - a command-line script


if __name__ == "__main__":
    main()
