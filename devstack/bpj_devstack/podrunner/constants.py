"""Names and limits shared by the local pod runner's modules.

Labels and annotations the runner sets or reads, the loopback address every pod
gets, and the timing and size limits of its API calls, heartbeats, watches,
process supervision and termination messages.
"""

from __future__ import annotations

from typing import Final

from bpj_devstack import kwok_config

RUNNER_LABEL: Final = kwok_config.ANNOTATION_PREFIX + "runner"
"""Label on the runner's nodes (value ``local``); pods select it to run for real."""
RUNNER_LABEL_VALUE: Final = "local"
NODE_LEASE_NAMESPACE: Final = "kube-node-lease"
JOB_COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
LOCAL_IP: Final = "127.0.0.1"
"""hostIP and podIP of every pod: the processes share this machine's loopback."""
DEFAULT_TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

# Every API request is bounded, so a wedged API server cannot hang a thread forever.
_API_TIMEOUT: Final = 10.0
# The kubelet renews its Lease every 10 s (a quarter of the 40 s lease) and the node
# lifecycle controller marks a node NotReady after missing ~40 s of renewals.
_HEARTBEAT_SECONDS: Final = 10.0
_LEASE_DURATION_SECONDS: Final = 40
# The server ends each watch after this long; the runner resumes from the last
# resourceVersion, so a silently dead connection is noticed within this bound too.
_WATCH_SECONDS: Final = 60
_WATCH_BACKOFF_SECONDS: Final = 1.0
_POLL_SECONDS: Final = 0.2
_MAX_GRACE_SECONDS: Final = 30.0
_KILL_WAIT_SECONDS: Final = 5.0
# A pod waits this long for a ConfigMap or Secret it needs (the kubelet waits forever,
# but a dev stack should fail loudly and move on).
_OBJECT_WAIT_SECONDS: Final = 60.0
_STATUS_ATTEMPTS: Final = 3
# kube-apiserver gives a pod-bound token requested with exactly 3607 s (the kubelet's
# magic value) a one-year lifetime when --service-account-extend-token-expiration is on
# (the default), so a training run longer than an hour keeps authenticating.
_TOKEN_EXPIRATION_SECONDS: Final = 3607
_MAX_MESSAGE_BYTES: Final = 4096
_FALLBACK_LOG_LINES: Final = 80
_FALLBACK_LOG_BYTES: Final = 2048
