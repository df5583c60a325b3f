"""A model for the pool tests: it reports who it is and does what the payload asks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

_CALLS = [0]
_BOOT_ID = os.urandom(8).hex()  # every worker is PID 1 of its namespace: pids say nothing


def answer(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the action named in ``payload["do"]`` and report this worker's identity."""
    _CALLS[0] += 1
    action = payload.get("do", "echo")
    result: dict[str, Any] = {"boot_id": _BOOT_ID, "calls": _CALLS[0]}
    if action == "leave":
        Path("/scratch", payload["name"]).write_text("secret of the previous tenant")
    elif action == "look":
        result["scratch"] = sorted(p.name for p in Path("/scratch").iterdir())
    elif action == "sleep":
        time.sleep(float(payload["seconds"]))
    elif action == "spin":
        end = time.process_time() + float(payload["seconds"])  # CPU seconds, whatever the load
        while time.process_time() < end:
            pass
    elif action == "allocate":
        result["size"] = len(bytearray(int(payload["bytes"])))
    elif action == "print":
        print(payload["text"], file=sys.stderr, flush=True)
    elif action == "fail":
        raise ValueError("asked to fail")
    return result
