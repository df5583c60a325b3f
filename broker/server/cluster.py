"""Keeps one replica in step with the others that share its PostgreSQL database.

What must be cluster-wide, and how this module makes it so:

- **Models registered, updated or retired** on any replica: the replica that committed the
  change publishes a notice on the change feed (:mod:`broker.storage.changes`); every process of
  every replica drops its cached resolution of that model on receiving it (typically within
  milliseconds). If the feed was down, the process drops its whole cache when it listens again;
  ``[registry] resolve_cache_seconds`` is the last bound, for a notice lost in between.
- **The active policy**: see :mod:`broker.policy.activations` for the rules. A replica adopts
  the newest stored bundle on each ``policy`` notice and after each gap; a bundle activated
  here is recorded and announced.

Everything else that must be shared already lives in the database (audit log, retention
schedule, holds, erasures, token vault, endpoint secrets) or in ``keys_dir`` (keys), which the
replicas share.
"""

from __future__ import annotations

import sqlalchemy as sa

from broker.logging import get_logger
from broker.policy import PolicyStore
from broker.policy.activations import PolicyActivations
from broker.policy.contract import PolicyLoadError
from broker.registry.cache import CachedResolver
from broker.registry.secrets import EndpointSecrets
from broker.storage.changes import ChangeFeed, Notice

_log = get_logger(__name__)

REGISTRY_TOPIC = "registry"
POLICY_TOPIC = "policy"


class ClusterSync:
    """The change feed of one process, wired to its resolver cache and policy store.

    ``policies`` is ``None`` where the policy does not come from a bundle (the OPA engine: OPA
    itself is then the cluster's single source of policy). ``endpoint_keys`` caches opened API
    keys under the resolver's change counter: a notice reaches it through that counter, a gap
    clears it with the resolver.
    """

    def __init__(
        self,
        engine: sa.Engine,
        resolver: CachedResolver,
        policies: PolicyStore | None,
        *,
        replica: str | None = None,
        endpoint_keys: EndpointSecrets | None = None,
    ) -> None:
        self._resolver = resolver
        self._endpoint_keys = endpoint_keys
        self._policies = policies
        self._activations = PolicyActivations(engine, replica=replica)
        self.feed = ChangeFeed(engine, on_notice=self._on_notice, on_gap=self._on_gap)

    def start(self) -> None:
        """Settle this replica's policy with the cluster's, then listen for changes."""
        if self._policies is not None:
            self._join_policy(self._policies)
            self._policies.on_activated(self._announce_policy)
        self.feed.start()

    def stop(self) -> None:
        """Stop listening."""
        self.feed.stop()

    def registry_changed(self, vendor: str, name: str) -> None:
        """Tell every replica that model ``vendor/name`` changed (after the commit)."""
        self.feed.publish(REGISTRY_TOPIC, vendor=vendor, name=name)

    # -- policy ---------------------------------------------------------------------------

    def _join_policy(self, policies: PolicyStore) -> None:
        """At start: record this replica's bundle if the cluster never had it, else adopt."""
        bundle = policies.bundle
        if bundle is None:
            return
        if not self._activations.known(bundle.revision):
            self._activations.record(bundle)
            _log.info("policy_recorded_for_cluster", revision=bundle.revision)
            self.feed.publish(POLICY_TOPIC, revision=bundle.revision)
            return
        self._adopt_latest(policies)

    def _announce_policy(self, revision: str, previous: str | None) -> None:
        """After a local activation: record it unless it is already the cluster's newest."""
        policies = self._policies
        bundle = policies.bundle if policies is not None else None
        if bundle is None or bundle.revision != revision:
            return
        if self._activations.latest_revision() == revision:
            return  # adopted from the cluster, or the same bundle activated twice
        self._activations.record(bundle)
        _log.info("policy_recorded_for_cluster", revision=revision, previous=previous)
        self.feed.publish(POLICY_TOPIC, revision=revision)

    def _adopt_latest(self, policies: PolicyStore) -> None:
        try:
            latest = self._activations.latest()
        except PolicyLoadError as exc:
            _log.error("policy_not_adopted", error=exc.reason, kept_revision=policies.revision)
            return
        if latest is None or latest.revision == policies.revision:
            return
        outcome = policies.activate(latest.bundle)
        _log.info("policy_adopted_from_cluster", revision=outcome.revision, status=outcome.status)

    # -- the feed's handlers --------------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        topic = notice.get("topic")
        if topic == REGISTRY_TOPIC:
            vendor, name = notice.get("vendor"), notice.get("name")
            if vendor is not None and name is not None:
                self._resolver.invalidate(vendor, name)
        elif topic == POLICY_TOPIC and self._policies is not None:
            self._adopt_latest(self._policies)

    def _on_gap(self) -> None:
        self._resolver.clear()
        if self._endpoint_keys is not None:
            self._endpoint_keys.clear()
        if self._policies is not None:
            self._adopt_latest(self._policies)
