"""`python -m bench [SECTION ...]`: JSON lines on stdout (one object a figure, key `bench`), a table on stderr.

Without sections, every section but `instructions` (which needs valgrind and takes minutes of its
own: `python -m bench instructions`, `make bench-instructions`)."""

from __future__ import annotations

import argparse
import os
import platform
import sys

import orjson

from bench import classifier, http_clients, instructions, parked, rate_limit, throughput
from worker.runtime import loop_name

SECTIONS = {
    "classifier": classifier.run,
    "http_client": http_clients.run,
    "parked": parked.run,
    "rate_limit": rate_limit.run,
    "throughput": throughput.run,
    "instructions": instructions.run,
}
DEFAULT = ("classifier", "http_client", "parked", "rate_limit", "throughput")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "sections", nargs="*", help=f"sections to run (default: {', '.join(DEFAULT)}; also: instructions)"
    )
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    machine = {
        "bench": "machine",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": loop_name(throughput.EVENT_LOOP),  # every consumer's, the raw floor's too
    }
    print(orjson.dumps(machine).decode(), flush=True)
    for name in args.sections or DEFAULT:
        for figure in SECTIONS[name]():
            print(orjson.dumps(figure).decode(), flush=True)
            print("  ".join(f"{k}={v}" for k, v in figure.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
