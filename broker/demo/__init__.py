"""Demo setup: backends that ``make run`` and the integration tests start beside the broker.

Nothing here is used when the broker serves real traffic; it exists so that one command gives a
working node with a real model behind it, and so that tests exercise the same setup.
"""
