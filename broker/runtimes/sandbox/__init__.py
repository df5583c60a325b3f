"""Sandboxed model runtime, the broker's side: vendor packages run in isolated worker processes.

This is the host side of the sandbox boundary: the launcher and its zygote client, worker pools,
per-worker cgroups and uid leases, and the runtime the call path dispatches to. The code that runs
*inside* the worker is the top-level ``sandbox`` package, which imports nothing from ``broker``;
the two share one module, :mod:`sandbox.protocol` (frames, the start spec and limits, exit codes,
the zygote's control messages). The threat model is ``sandbox/README.md``.

The public API lives in :mod:`broker.runtimes.sandbox.launcher` (``SandboxLauncher``, ``Worker``),
:mod:`broker.runtimes.sandbox.probe` (``sandbox_support``), :mod:`broker.runtimes.sandbox.runtime`
and :mod:`broker.runtimes.sandbox.errors`. This ``__init__`` imports nothing, so importing one of
them costs only what it needs.
"""
