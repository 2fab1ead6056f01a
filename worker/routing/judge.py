"""The judge: a model that grades another model's answer against the prompt, pass or fail. Pure.

The judge gets the job's prompt and the answer in one message and replies with one word. A reply that
is neither PASS nor FAIL counts as a fail: a judge that cannot grade has not passed the answer.
"""

from __future__ import annotations

from worker.messages import ChatMessage, Job

JUDGE_SYSTEM = (
    "You are a strict grader. Decide whether the answer below is a correct and complete answer to the prompt. "
    "Reply with exactly one word: PASS or FAIL."
)
VERDICT_ASK = "Verdict (PASS or FAIL):"
JUDGE_MAX_OUTPUT_TOKENS = 8
# The judge's instructions around the prompt and the answer, in tokens (for its cost estimate).
JUDGE_PROMPT_TOKENS = 80


def judge_messages(job: Job, messages: list[ChatMessage], answer: str) -> list[ChatMessage]:
    """The judge's request: the prompt (each message as `role: text`), the answer and the rubric, if any."""
    prompt = "\n".join(f"{m.role}: {m.text()}" for m in messages)
    rubric = job.checks.rubric if job.checks is not None else None
    parts = [f"Prompt:\n<prompt>\n{prompt}\n</prompt>", f"Answer:\n<answer>\n{answer}\n</answer>"]
    if rubric:
        parts.append(f"Grade by this rubric:\n<rubric>\n{rubric}\n</rubric>")
    parts.append(VERDICT_ASK)
    return [ChatMessage(role="system", content=JUDGE_SYSTEM), ChatMessage(role="user", content="\n\n".join(parts))]


def passed(reply: str) -> bool:
    """Whether the judge's reply passes the answer: its first word is PASS (any case, any punctuation)."""
    words = reply.strip().split(maxsplit=1)
    return bool(words) and words[0].strip(".,:;!*\"'`").upper() == "PASS"
