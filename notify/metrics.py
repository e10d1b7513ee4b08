"""Prometheus metrics: what the outbox holds and what went out, for dashboards and alerts.

Two kinds. Counts kept in the database (deliveries by channel and status, the queue depth,
unsubscribes by source) are read at scrape time, so every web and worker process reports
the same truth and nothing is lost when a process restarts. Timings only a process sees
(how long a send takes) are prometheus-client histograms of that process: ``notify serve``
shows those of its own sender, and ``notify worker --metrics-port`` serves a worker's.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from tortoise.functions import Count

from notify import store
from notify.models import ConsentEvent, Delivery, DeliveryStatus

#: Seconds from handing a message to the channel until it was accepted (SMTP or Twilio).
SEND_SECONDS = Histogram(
    "notify_send_seconds", "Time to hand one message to the relay or Twilio",
    ["channel"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                          10, 30))


class _Snapshot:
    """A collector that yields metric families read beforehand (collectors are sync)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def database_families() -> list[Metric]:
    deliveries = GaugeMetricFamily("notify_deliveries", "Deliveries by channel and status",
                                   labels=["channel", "status"])
    rows = await (Delivery.all().annotate(n=Count("id")).group_by("channel", "status")
                  .values("channel", "status", "n"))
    for row in rows:
        deliveries.add_metric([row["channel"], row["status"]], row["n"])
    depth = GaugeMetricFamily("notify_queue_depth", "Deliveries due now and not yet sent",
                              labels=["channel"])
    due = await (Delivery.filter(status=DeliveryStatus.QUEUED, next_attempt_at__lte=store.now())
                 .annotate(n=Count("id")).group_by("channel").values("channel", "n"))
    counted = {row["channel"]: row["n"] for row in due}
    for channel in ("email", "sms"):
        depth.add_metric([channel], counted.get(channel, 0))
    unsubscribes = CounterMetricFamily("notify_unsubscribes", "Withdrawals by source",
                                       labels=["source"])
    by_source = await (ConsentEvent.filter(to_state="unsubscribed").annotate(n=Count("id"))
                       .group_by("source").values("source", "n"))
    for row in by_source:
        unsubscribes.add_metric([row["source"]], row["n"])
    return [deliveries, depth, unsubscribes]


async def exposition() -> bytes:
    """The text format: this process's own metrics, then the database's counts."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await database_families()))
    return generate_latest(REGISTRY) + generate_latest(registry)
