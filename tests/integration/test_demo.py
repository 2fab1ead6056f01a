"""`llm-router demo` runs end to end and exits 0 (on its own embedded broker, or KAFKA_BOOTSTRAP_SERVERS)."""

import os
import re
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
    assert "24 results" in out.stdout and "8 dead letters" in out.stdout and "nothing lost" in out.stdout
    assert "no_route: allowed_providers" in out.stdout
    rows = {
        line.split()[0].split("-", 1)[1]: line for line in out.stdout.splitlines() if re.match(r"[0-9a-f]{8}-", line)
    }
    # The jobs applications send: a structured answer, a tool call, an image; each ok with what it asked for.
    assert re.search(r"\bok\b.*\{\"city\": ?\"Lyon\", ?\"country\": ?\"France\"\}", rows["structured"])
    assert re.search(r"\bok\b.*get_weather\(\{\"city\": ?\"Paris\"\}\)", rows["tool"])
    assert re.search(r"\bok\b", rows["image"])
    # The cost events add up to what the simulator billed, prompt-cache reads included.
    bill = re.search(
        r"Bill: .* sum to \$([0-9.]+) \((\d+) input tokens read from prompt caches\); the simulator billed "
        r"\$([0-9.]+); difference \$([0-9.]+)",
        out.stdout,
    )
    assert bill, out.stdout[-2000:]
    assert bill.group(1) == bill.group(3) and float(bill.group(4)) <= 0.000001 and int(bill.group(2)) > 0
