"""Integration tests: real servers on port 0, real MLServer where the test says so."""
