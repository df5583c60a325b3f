"""Benchmarks of the broker against a direct call and a bare gRPC proxy hop (``make bench``).

Run ``python -m bench`` (or ``--quick`` while developing); see ``bench/README.md`` for what each
figure means and the latest numbers.
"""
