"""Side-by-side speed and memory benchmarks: anatomist vs Hugging Face and peer libraries.

Run ``make bench`` or ``python -m benchmarks --help``; docs/performance.md explains the table.
"""
