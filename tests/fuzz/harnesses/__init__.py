"""One module per harness: ``fuzz_one(data: bytes) -> None`` and the errors it may raise.

Each ``fuzz_one`` lets through (catches) only the exception types the code under test documents
for bad input, listed in the module's ``EXPECTED``; anything else escaping is a finding, as is an
input that hangs or uses too much memory (``runner.py`` sets libFuzzer's limits).
"""
