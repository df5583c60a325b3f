"""A demo cluster on one machine: PostgreSQL-backed replicas behind HAProxy (``broker cluster``).

Modules: :mod:`~broker.cluster.tls` (a throwaway CA, the replicas' server certificates and the
balancer's client certificate), :mod:`~broker.cluster.balancer` (HAProxy's configuration and
process), :mod:`~broker.cluster.launcher` (replicas, their configuration, the state file that
``broker cluster down`` reads), :mod:`~broker.cluster.cli` (the ``broker cluster`` command).
"""
