"""Child process for the SIGKILL test: appends from many threads, prints each receipt it got.

Usage: python -m tests.integration.audit_load DATABASE_URL KEY_DIR
A line ``<leaf_index> <entry hash hex> <call id>`` is printed (and flushed) only after
``AuditLog.append`` returned, i.e. after the entry's batch was committed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from broker.audit.keys import TenantKeys, load_or_create_log_signer
from broker.audit.writer import AuditLog
from broker.storage.db import create_engine_for, migrate
from tests.unit.audit.conftest import ORIGIN, make_intent


def main() -> None:
    """Append forever until killed."""
    url, key_dir = sys.argv[1], Path(sys.argv[2])
    engine = create_engine_for(url)
    migrate(engine)
    log = AuditLog(
        engine,
        signer=load_or_create_log_signer(key_dir, ORIGIN),
        origin=ORIGIN,
        tenant_keys=TenantKeys.load_or_create(key_dir),
        batch_ms=5,
    )
    log.start()
    lock = threading.Lock()

    def work(worker: int) -> None:
        n = 0
        while True:
            n += 1
            receipt = log.append(make_intent(call_id=f"w{worker}-{n}"))
            with lock:
                sys.stdout.write(
                    f"{receipt.leaf_index} {receipt.entry_hash.hex()} {receipt.call_id}\n"
                )
                sys.stdout.flush()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
