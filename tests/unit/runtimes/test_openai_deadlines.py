"""The shared deadline watcher of the OpenAI-compatible runtime (``transport.DeadlineWatcher``).

The end-to-end behaviour (a trickling vendor is cut off at the deadline) is tested in
``test_openai_stream``; these tests pin the watcher's own rules: an armed deadline aborts its
guard, a cancelled one never does, and a short deadline armed after a long one is not kept
waiting behind it. Waits are bounded generously; nothing asserts on how long anything took.
"""

from __future__ import annotations

import time

from broker.runtimes.openai.transport import AbortReason, CallGuard, DeadlineWatcher

_PATIENCE = 10.0


def _wait_aborted(guard: CallGuard) -> AbortReason | None:
    until = time.monotonic() + _PATIENCE
    while guard.reason is None and time.monotonic() < until:
        time.sleep(0.005)
    return guard.reason


def test_an_expired_deadline_aborts_its_guard() -> None:
    watcher = DeadlineWatcher()
    guard = CallGuard()
    watcher.watch(guard, 0.01)
    assert _wait_aborted(guard) is AbortReason.DEADLINE


def test_a_cancelled_deadline_never_aborts() -> None:
    watcher = DeadlineWatcher()
    cancelled, witness = CallGuard(), CallGuard()
    watcher.watch(cancelled, 0.01).cancel()
    watcher.watch(witness, 0.05)  # due after the cancelled one: once it fired, that one was seen
    assert _wait_aborted(witness) is AbortReason.DEADLINE
    assert cancelled.reason is None


def test_a_short_deadline_is_not_kept_behind_a_long_one() -> None:
    watcher = DeadlineWatcher()
    late, early = CallGuard(), CallGuard()
    watcher.watch(late, 3600)
    watcher.watch(early, 0.01)
    assert _wait_aborted(early) is AbortReason.DEADLINE
    assert late.reason is None


def test_a_finished_call_is_not_touched_by_its_deadline() -> None:
    watcher = DeadlineWatcher()
    finished, witness = CallGuard(), CallGuard()
    finished.finish()
    watcher.watch(finished, 0.01)
    watcher.watch(witness, 0.05)
    assert _wait_aborted(witness) is AbortReason.DEADLINE
    assert finished.reason is None


def test_disarmed_watches_do_not_pile_up_behind_long_deadlines() -> None:
    """A buyer may set a deadline of hours: finished calls must not keep their entries."""
    watcher = DeadlineWatcher()
    live = [watcher.watch(CallGuard(), 3600) for _ in range(10)]
    for _ in range(1000):
        watcher.watch(CallGuard(), 3600).cancel()
    assert watcher.pending <= 2 * (len(live) + 64) + 1
    assert all(entry.guard is not None and not entry.cancelled for entry in live)


def test_cancel_is_idempotent_and_lets_go_of_the_guard() -> None:
    watcher = DeadlineWatcher()
    entry = watcher.watch(CallGuard(), 3600)
    entry.cancel()
    entry.cancel()
    assert entry.cancelled and entry.guard is None
