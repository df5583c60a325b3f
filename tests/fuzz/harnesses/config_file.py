"""The operator's config file (TOML) and ``BROKER__`` environment overrides -> ``load_config``.

The input is ``<TOML bytes>`` optionally followed by ``\\x00`` and environment lines
``NAME=value`` (names get the ``BROKER__`` prefix if they lack it). The file is written as
the operator's file would be, bytes as given. ``load_config`` documents ``ConfigError``
"naming the file and the offending setting" for anything it cannot use; the CLI reports that
error cleanly, anything else is a traceback at start-up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.config import ENV_PREFIX, ConfigError, load_config

#: ``load_config``: "Raises ConfigError naming the file and the offending setting."
EXPECTED = (ConfigError,)

_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "broker.toml"


def _environ(raw: bytes) -> dict[str, str]:
    environ = {}
    for line in raw.decode("utf-8", "surrogateescape").split("\n"):
        name, eq, value = line.partition("=")
        if eq and name:
            environ[name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name] = value
    return environ


def fuzz_one(data: bytes) -> None:
    """Load one config file with its environment."""
    toml, _, env = data.partition(b"\x00")
    _FILE.write_bytes(toml)
    try:
        load_config(_FILE, environ=_environ(env))
    except EXPECTED:
        return


if __name__ == "__main__":
    main(fuzz_one)
