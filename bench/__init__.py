"""Benchmarks: `make bench` (python -m bench). Figures as JSON lines on stdout, a table on stderr."""
