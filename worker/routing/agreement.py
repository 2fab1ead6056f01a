"""When two answers agree: compared ignoring case, surrounding space and final punctuation; JSON answers in
canonical form (keys sorted, no spaces), so that the same value written two ways agrees. Pure."""

from __future__ import annotations

import orjson

from worker.routing.verify import answer_body, text_key


def answer_key(text: str) -> str:
    """What an answer is compared by: its JSON value in canonical form when it is JSON (a fenced block's body
    counts), else its text without case, surrounding space and final punctuation."""
    body = answer_body(text).strip()
    if body[:1] in ("{", "["):
        try:
            return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONDecodeError:
            pass
    return text_key(body)


def agree(texts: list[str]) -> bool:
    """Whether every answer in `texts` agrees with the first."""
    keys = {answer_key(text) for text in texts}
    return len(keys) == 1
