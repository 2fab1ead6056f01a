"""The classifier's cost per job on the shipped workload's prompts (no Kafka, no HTTP)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from worker.config import load_config
from worker.messages import Job
from worker.routing.classify import Classifier

WORKLOAD = Path(__file__).resolve().parent / "workload.jsonl"


def run(rounds: int = 20) -> list[dict]:
    jobs = [msgspec.json.decode(line, type=Job) for line in WORKLOAD.read_bytes().splitlines() if line.strip()]
    classifier = Classifier(load_config(env={}).classifier)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for job in jobs:
            classifier.classify(job)
        best = min(best, (time.perf_counter() - started) / len(jobs))
    prompts = sorted(len(job.text()) for job in jobs)
    return [
        {
            "bench": "classifier",
            "jobs": len(jobs),
            "us_per_job": round(best * 1e6, 2),
            "median_prompt_chars": prompts[len(prompts) // 2],
            "max_prompt_chars": prompts[-1],
        }
    ]
