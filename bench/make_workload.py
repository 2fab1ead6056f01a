"""Writes bench/workload.jsonl: 600 evaluation jobs across the task types, with expected answers.

Deterministic (seeded), so the shipped file can be regenerated: `python -m bench.make_workload`.
`--jobs N --out PATH [--seed S]` writes another sample of N jobs in the same mix of task types.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson

OUT = Path(__file__).resolve().parent / "workload.jsonl"
CITIES = ["Lima", "Oslo", "Nairobi", "Hanoi", "Quito", "Riga", "Accra", "Tunis", "Bern", "Dhaka", "Doha", "Sofia"]
COUNTRIES = [
    "Peru",
    "Norway",
    "Kenya",
    "Vietnam",
    "Ecuador",
    "Latvia",
    "Ghana",
    "Tunisia",
    "Switzerland",
    "Bangladesh",
    "Qatar",
    "Bulgaria",
]
TOPICS = [
    "the quarterly board meeting",
    "the incident review of the payment outage",
    "the migration to the new data warehouse",
    "the hiring plan for next year",
    "customer feedback from the beta",
]
LANGS = ["Python", "Go", "Rust", "TypeScript", "Java"]
THINGS = ["a lighthouse keeper", "a lost satellite", "a night bakery", "an old ferry", "a chess club"]


# Jobs of each task type in the shipped 600.
MIX = [
    ("simple_qa", 180),
    ("summarization", 90),
    ("code_generation", 120),
    ("complex_reasoning", 90),
    ("creative_writing", 90),
    ("long_context", 30),
]
SHIPPED_JOBS = sum(count for _, count in MIX)


def jobs(seed: int = 2026, total: int = SHIPPED_JOBS) -> list[dict]:
    """`total` jobs in the shipped mix of task types (rounded, the last type taking the remainder)."""
    rng = random.Random(seed)
    out: list[dict] = []
    counts = [round(count * total / SHIPPED_JOBS) for _, count in MIX[:-1]]
    counts.append(total - sum(counts))
    for (task, _), count in zip(MIX, counts, strict=True):
        for i in range(count):
            out.append(make(task, i, rng))
    rng.shuffle(out)
    return out


def make(task: str, i: int, rng: random.Random) -> dict:
    job_id = f"{task}-{i:03d}"
    if task == "simple_qa":
        k = rng.randrange(len(COUNTRIES))
        if i % 2:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            return {
                "id": job_id,
                "prompt": f"What is {a} plus {b}? Answer with the number only.",
                "checks": {"expected": str(a + b)},
                "max_output_tokens": 16,
            }
        return {
            "id": job_id,
            "prompt": f"What is the capital of {COUNTRIES[k]}? One word.",
            "checks": {"expected": CITIES[k]},
            "max_output_tokens": 16,
        }
    if task == "summarization":
        topic = rng.choice(TOPICS)
        decisions = rng.randint(2, 9)
        notes = " ".join(
            f"Item {n}: the team discussed {topic} and agreed on step {n}." for n in range(1, decisions + 1)
        )
        return {
            "id": job_id,
            "prompt": f"Summarize the key points of these notes as the number of decisions taken. {notes}",
            "checks": {"expected": str(decisions)},
        }
    if task == "code_generation":
        n = rng.randint(5, 25)
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        lang = rng.choice(LANGS)
        return {
            "id": job_id,
            "prompt": f"Implement fib(n) in {lang} with fib(0)=0, fib(1)=1 and reply with the value of fib({n}).",
            "checks": {"expected": str(a)},
        }
    if task == "complex_reasoning":
        x, y = rng.randint(100, 999), rng.randint(100, 999)
        return {
            "id": job_id,
            "prompt": f"Compare the products {x}*3 and {y}*2 and answer with the larger product.",
            "checks": {"expected": str(max(x * 3, y * 2))},
        }
    if task == "creative_writing":
        thing = rng.choice(THINGS)
        word = rng.choice(["Tide", "Ember", "Harbor", "Drift", "Lantern", "Echo"])
        return {
            "id": job_id,
            "prompt": f"Write a one-word title, starting with '{word[0]}', for a story about {thing}: use {word}.",
            "checks": {"expected": word},
        }
    filler = " ".join(f"Line {n}: the log shows request {rng.randint(1000, 9999)} served." for n in range(320))
    errors = rng.randint(1, 40)
    return {
        "id": job_id,
        "prompt": f"Here is a service log. {filler} In total {errors} requests failed. How many requests failed?",
        "checks": {"expected": str(errors)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.make_workload", description=__doc__)
    parser.add_argument("--jobs", type=int, default=SHIPPED_JOBS, help=f"how many (default {SHIPPED_JOBS})")
    parser.add_argument("--seed", type=int, default=2026, help="the sample's seed (default 2026, the shipped one)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = parser.parse_args()
    sample = jobs(args.seed, args.jobs)
    with open(args.out, "wb") as out:
        for job in sample:
            out.write(orjson.dumps(job) + b"\n")
    print(f"{args.out}: {len(sample)} jobs")


if __name__ == "__main__":
    main()
