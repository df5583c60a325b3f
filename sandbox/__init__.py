"""The inside of the sandbox: the code that runs in the isolated worker, and nothing else.

A worker (:mod:`sandbox.worker`, forked by :mod:`sandbox.zygote` or started fresh) reads its
spec, locks itself in (:mod:`sandbox.namespaces`, :mod:`sandbox.rlimits`,
:mod:`sandbox.privileges`, :mod:`sandbox.landlock`, :mod:`sandbox.seccomp_filter`) and then
serves one model package on its channel. The broker's side (launcher, pools, cgroups, uid leases)
is ``broker.runtimes.sandbox``; the two share one module, :mod:`sandbox.protocol`.

This package imports nothing from ``broker`` (a contract ``make lint`` checks): the inside knows
no policy, audit, keys or config. This ``__init__`` imports nothing at all, because every import
the worker makes before it locks itself in is start-up time. The threat model is ``README.md``
beside this file.
"""
