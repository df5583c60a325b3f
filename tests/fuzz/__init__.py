"""Coverage-guided fuzzing of every parser that sees outside input (atheris + libFuzzer).

``python -m tests.fuzz <harness|all> --seconds N`` runs harnesses (``harnesses/``), each in its
own process, over its checked-in seed corpus (``corpus/<harness>/``); ``make fuzz`` is the
long form and ``test_fuzz_short.py`` the short one CI runs. See the README's "Fuzzing" part.
"""
