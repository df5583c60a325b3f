"""``tests/integration/test_invoke_stream.py`` again, every broker serving with ``[server] aio``.

Streaming is where the bridge does the most (each step of the servicer's generator in the
pool, in the call's own context variables; the generator closed after a cancelled step), so
its tests run both ways in every test run (see ``test_aio_broker_api.py``).
"""

from __future__ import annotations

import pytest

from broker.server.aio import LoopServer
from tests.integration import harness
from tests.integration.harness import serve_with_aio  # noqa: F401 - the fixture below
from tests.integration.test_invoke_stream import *  # noqa: F403 - collected again here, under aio

pytestmark = pytest.mark.usefixtures("serve_with_aio")


def test_the_broker_here_serves_with_grpc_aio(broker: harness.BrokerHarness) -> None:
    assert isinstance(broker.server.server, LoopServer)
