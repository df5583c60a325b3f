"""Sandboxed model runtime: vendor model packages run in isolated, network-less worker processes.

The public API lives in :mod:`broker.runtimes.sandbox.launcher` (``SandboxLauncher``, ``Worker``,
``sandbox_support``) and :mod:`broker.runtimes.sandbox.errors`. This ``__init__`` imports nothing
on purpose: the worker process imports the sibling kernel modules before it locks itself in, and
every import it makes there is start-up time (and grpc, pulled in by the error tree, costs 50 ms).
The threat model is in ``sandbox/README.md`` at the top of the repository.
"""
