"""How a node's supervisor reads ``server.listen`` and hands workers their port."""

from __future__ import annotations

import pytest

from broker.config import Config, ConfigError
from broker.server.workers import split_listen, with_port


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::]:443", ("[::]", 443)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_listen_addresses_split_into_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["50051", ":50051", "host:", "host:http", "host:70000"])
def test_malformed_listen_addresses_are_configuration_errors(listen: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        split_listen(listen)


def test_workers_get_the_port_on_the_configured_host() -> None:
    config = Config.model_validate({"server": {"listen": "[::1]:0", "workers": 3}})
    moved = with_port(config, 41234)
    assert moved.server.listen == "[::1]:41234"
    assert moved.server.workers == 3
    assert config.server.listen == "[::1]:0"  # the original is left as it was
