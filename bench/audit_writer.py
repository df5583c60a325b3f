"""``python -m bench.audit_writer URL KEY_DIR THREADS``: one audit writer process for the bench.

It opens the durable log on ``URL`` as ``broker serve`` does (``AuditLog`` with the configured
group commit, keys from ``KEY_DIR``, shared by every writer like a cluster's ``keys_dir``) and
appends administrative entries from ``THREADS`` threads back to back until its stdin closes
(the bench closing it, or dying). Several such processes on one PostgreSQL database are several
replicas contending for the one integrator lock; the bench counts the log's growth, not what
the writers say.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ORIGIN = "bench.local/audit"


def main() -> None:
    """Append until stdin closes, then close the log (committing what is in flight)."""
    from broker.audit.keys import TenantKeys, load_or_create_log_signer  # noqa: PLC0415
    from broker.audit.writer import AuditLog  # noqa: PLC0415
    from broker.config import AuditConfig  # noqa: PLC0415
    from broker.storage.db import create_engine_for  # noqa: PLC0415

    url, key_dir, threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    defaults = AuditConfig()
    log = AuditLog(
        create_engine_for(url),
        signer=load_or_create_log_signer(key_dir, ORIGIN),
        origin=ORIGIN,
        tenant_keys=TenantKeys.load_or_create(key_dir),
        batch_ms=defaults.batch_ms,
        batch_max=defaults.batch_max,
    )
    log.start()
    stop = threading.Event()

    def append(slot: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            log.record_admin(
                kind="admin.key.created", tenant="acme", actor="bench", target=f"k{slot}-{n}"
            )

    workers = [threading.Thread(target=append, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # returns when the bench closes stdin or exits
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    log.close()


if __name__ == "__main__":
    main()
