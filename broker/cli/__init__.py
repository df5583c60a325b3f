"""The ``broker`` command."""
