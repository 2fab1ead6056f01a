"""`llm-router demo` runs end to end and exits 0 (on its own embedded broker, or KAFKA_BOOTSTRAP_SERVERS)."""

import os
import subprocess
import sys

from tests.integration.helpers import REPO


def test_demo_exits_0_showing_results_costs_and_dead_letters(bootstrap):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER__")}
    out = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--jobs", "24"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Results" in out.stdout and "Cost by model" in out.stdout and "Dead letters" in out.stdout
    assert "24 results" in out.stdout and "7 dead letters" in out.stdout and "nothing lost" in out.stdout
    assert "no_route: allowed_providers" in out.stdout
