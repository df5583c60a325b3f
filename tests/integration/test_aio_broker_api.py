"""``tests/integration/test_broker_api.py`` again, every broker serving with ``[server] aio``.

The asynchronous server (``broker/server/aio.py``) is off by default; this module keeps its
bridge honest in every test run: the same calls, statuses, error details, health and
reflection through grpc.aio's event loop and the bridged synchronous servicers.
(``BROKER_TEST_SERVER_AIO=1`` runs the whole integration suite that way.)
"""

from __future__ import annotations

import pytest

from broker.server.aio import LoopServer
from tests.integration import harness
from tests.integration.harness import serve_with_aio  # noqa: F401 - the fixture below
from tests.integration.test_broker_api import *  # noqa: F403 - collected again here, under aio

pytestmark = pytest.mark.usefixtures("serve_with_aio")


def test_the_broker_here_serves_with_grpc_aio(broker: harness.BrokerHarness) -> None:
    assert isinstance(broker.server.server, LoopServer)
