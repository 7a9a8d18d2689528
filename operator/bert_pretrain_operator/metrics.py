"""Prometheus metrics of the operator (served on Settings.metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_BY_PHASE = Gauge(
    "bpj_jobs", "BertPretrainJobs by phase, as of their last reconcile", ["phase"]
)
RECONCILE_SECONDS = Histogram(
    "bpj_reconcile_seconds",
    "Time of one reconcile of one job",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("bpj_reconcile_errors_total", "Reconciles that raised")
FAILING_JOBS = Gauge("bpj_failing_jobs", "Jobs whose last reconcile raised (retried with backoff)")
RESTARTS = Counter(
    "bpj_training_restarts_total", "Training attempts restarted after an infrastructure failure"
)
QUEUE_DEPTH = Gauge("bpj_workqueue_depth", "Jobs waiting to be reconciled")
API_REQUESTS = Counter(
    "bpj_api_requests_total",
    "Kubernetes API requests the reconciler made, by verb and resource",
    ["verb", "resource"],
)
API_THROTTLED = Counter(
    "bpj_api_throttled_total",
    "429 Too Many Requests answers the reconciler's API requests met (each one waited out"
    " for its Retry-After and sent again), by verb and resource",
    ["verb", "resource"],
)
WATCH_EVENTS = Counter(
    "bpj_watch_events_total",
    "Watch events of child Jobs and pods that reached the operator, by resource and by"
    " whether they carry the job label (ours=false stays 0: the API server filters)",
    ["resource", "ours"],
)
CHILDREN_READS = Counter(
    "bpj_children_reads_total",
    "Reconciles' reads of a job's child Jobs and pods, by source: the watches' copies, or a"
    " LIST when those do not yet hold a Job the status names",
    ["source"],
)
