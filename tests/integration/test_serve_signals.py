"""A signal the kernel hands to any thread of the broker still stops it.

A process-directed signal may be delivered to any thread that does not block it, and grpcio's
and the pool's threads do not. The broker's main thread sleeps until it is told to stop; it
must wake up however the signal arrived (the stop pipe is the signal wake-up fd).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import os, signal, threading, time
from broker.config import load_config
from broker.logging import configure_logging
from broker.server.app import build_server

configure_logging("info")  # JSON lines to stderr
server = build_server(load_config(None))

def from_another_thread() -> None:
    # Once the main thread sleeps in serve_forever (reading its stop pipe), send the signal to
    # this thread, not to the main thread: nothing interrupts the main thread's read.
    wchan = f"/proc/self/task/{os.getpid()}/wchan"
    for _ in range(1000):
        if "pipe_read" in open(wchan).read():
            break
        time.sleep(0.01)
    else:
        raise SystemExit("the main thread never slept in serve_forever")
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

server.serve_forever(on_started=lambda: threading.Thread(target=from_another_thread).start())
print("drained", flush=True)
"""


def test_sigterm_delivered_to_another_thread_still_drains_the_server(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BROKER__DATA_DIR": str(tmp_path / "var"),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__DATABASE__URL": f"sqlite:///{tmp_path / 'broker.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a liveness bound: without the wake-up fd the process sleeps forever
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "drained"
    assert '"signal": "SIGTERM"' in done.stderr
