"""Prometheus metrics shared by the API, the services and the worker (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_LATENCY = Histogram(
    "patchseek_request_seconds",
    "HTTP request latency by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEARCH_LATENCY = Histogram(
    "patchseek_search_seconds",
    "Search latency (encode + score + lookup)",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DOCUMENTS_INGESTED = Counter(
    "patchseek_documents_ingested_total",
    "Documents processed by ingestion, by outcome",
    ["status"],
    registry=REGISTRY,
)
UNITS_INGESTED = Counter(
    "patchseek_units_ingested_total", "Units (pages, images, frames) indexed", registry=REGISTRY
)
INGEST_SECONDS = Counter(
    "patchseek_ingest_seconds_total",
    "Time spent ingesting documents (units / this = throughput)",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("patchseek_jobs_queued", "Jobs waiting for a worker", registry=REGISTRY)
JOBS_RUNNING = Gauge("patchseek_jobs_running", "Jobs being processed", registry=REGISTRY)
INDEX_UNITS = Gauge(
    "patchseek_index_units", "Searchable units per collection", ["collection"], registry=REGISTRY
)
INDEX_BYTES = Gauge(
    "patchseek_index_bytes",
    "Patch vectors stored for searchable units, per collection",
    ["collection"],
    registry=REGISTRY,
)
