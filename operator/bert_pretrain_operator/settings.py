"""Operator settings, read once from the environment (set by the Helm chart's values).

Every field documents its unit, what None means, and why its default was chosen.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """How this operator instance behaves; immutable after start-up."""

    trainer_image: str = "ghcr.io/bert-pretrain-operator/trainer:0.1.0"
    """Image of the trainer when a job's spec.image is unset (BPJ_TRAINER_IMAGE)."""
    trainer_image_pull_policy: str | None = None
    """imagePullPolicy of trainer containers (BPJ_TRAINER_IMAGE_PULL_POLICY: Always,
    IfNotPresent or Never); None leaves Kubernetes' default for the tag. Never suits
    nodes whose images are preloaded (the local stack imports them into containerd)."""
    trainer_service_account: str = "bert-trainer"
    """Service account of trainer pods when spec.serviceAccountName is unset
    (BPJ_TRAINER_SERVICE_ACCOUNT). The chart creates it in each namespace it serves
    with a Role that may patch BertPretrainJob status only."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (BPJ_NAMESPACES, comma-separated, glob patterns such as
    ``team-*`` allowed, as kopf accepts); empty means cluster-wide."""
    peering_name: str | None = None
    """kopf peering object for active/standby HA (BPJ_PEERING); None runs standalone."""
    metrics_port: int | None = 8080
    """Port of the Prometheus /metrics endpoint (BPJ_METRICS_PORT; 0 disables)."""
    health_port: int | None = 8081
    """Port of kopf's liveness endpoint /healthz (BPJ_HEALTH_PORT; 0 disables)."""
    resync_seconds: float = 30.0
    """Seconds between full reconciles of every job (BPJ_RESYNC_SECONDS). Watches drive
    most work; the resync catches time-based rules (deadline, TTL) and missed events."""
    workers: int = 4
    """Reconciles that run at once, each on its own job (BPJ_WORKERS). A reconcile mostly
    waits for the API server, so more workers mean a shorter queue after a burst of new
    jobs, up to what the API server serves."""
    progress_report_seconds: float = 10.0
    """Minimum seconds between the trainer's progress patches (BPJ_PROGRESS_SECONDS);
    bounds API load to one write per job per interval."""
    prepare_cpu: str = "2"
    """CPU request of the prepare Job (BPJ_PREPARE_CPU); it uses every core it gets."""
    prepare_memory: str = "8Gi"
    """Memory request and limit of the prepare and export Jobs (BPJ_PREPARE_MEMORY). A
    prepare worker's peak grows with its chunk of text, not with the corpus."""
    prepare_bytes_per_worker: int = 1 << 30
    """Corpus bytes per prepare worker pod when a job does not set
    spec.data.preparation.workers (BPJ_PREPARE_BYTES_PER_WORKER): four 256 MiB chunks per
    pod, so a 20 GB corpus (Wikipedia and books) gets 20 pods."""
    prepare_max_workers: int = 32
    """Most prepare worker pods a job gets when its spec does not say
    (BPJ_PREPARE_MAX_WORKERS); an explicit spec.data.preparation.workers may go to 64."""
    tmp_size_limit: str = "20Gi"
    """sizeLimit of every trainer pod's /tmp emptyDir (BPJ_TMP_SIZE_LIMIT, a quantity).
    /tmp holds the shard being written (prepare's shards pass: one shard of records),
    the exported model before its upload, and TensorFlow's and JAX's caches; a pod
    over it is evicted and the job fails as LocalStorageExceeded. 20Gi holds a
    BERT-large export several times over and a shard of a corpus of 20 GB of text."""
    extra_trainer_env: Mapping[str, str] = field(default_factory=dict)
    """Environment added to every trainer container (BPJ_TRAINER_ENV_<NAME>=value);
    the local stack uses it to point TensorFlow at the GCS emulator. Values land in
    the pod specs, readable by whoever may read pods: never put credentials here."""
    trainer_env_secret: str | None = None
    """A Secret in each job's namespace whose keys become environment variables of
    every trainer container (BPJ_TRAINER_ENV_SECRET; envFrom with secretRef), for what
    must not sit in pod specs: a proxy's credentials, a token. None: no such Secret.
    A pod whose Secret is missing does not start (CreateContainerConfigError)."""

    @property
    def exact_namespaces(self) -> bool:
        """Every watched namespace is named exactly (no glob, no ``!`` exclusion, no list).

        Then the operator needs no cluster-wide permission at all: kopf watches each
        namespace directly (scanning off: no namespace or CRD watches), and the chart
        grants its rules with a Role in each of them.
        """
        return bool(self.namespaces) and not any(
            c in pattern for pattern in self.namespaces for c in NAMESPACE_PATTERN_CHARS
        )

    def watches(self, namespace: str) -> bool:
        return not self.namespaces or any(
            fnmatch.fnmatchcase(namespace, pattern) for pattern in self.namespaces
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        base = cls()

        def port(name: str, default: int | None) -> int | None:
            raw = env.get(name)
            if raw is None:
                return default
            return int(raw) or None

        prefix = "BPJ_TRAINER_ENV_"
        return cls(
            trainer_image=env.get("BPJ_TRAINER_IMAGE", base.trainer_image),
            trainer_image_pull_policy=_pull_policy(env.get("BPJ_TRAINER_IMAGE_PULL_POLICY")),
            trainer_service_account=env.get(
                "BPJ_TRAINER_SERVICE_ACCOUNT", base.trainer_service_account
            ),
            namespaces=tuple(n for n in env.get("BPJ_NAMESPACES", "").split(",") if n),
            peering_name=env.get("BPJ_PEERING") or None,
            metrics_port=port("BPJ_METRICS_PORT", base.metrics_port),
            health_port=port("BPJ_HEALTH_PORT", base.health_port),
            resync_seconds=float(env.get("BPJ_RESYNC_SECONDS", base.resync_seconds)),
            workers=max(1, int(env.get("BPJ_WORKERS", base.workers))),
            progress_report_seconds=float(
                env.get("BPJ_PROGRESS_SECONDS", base.progress_report_seconds)
            ),
            prepare_cpu=env.get("BPJ_PREPARE_CPU", base.prepare_cpu),
            prepare_memory=env.get("BPJ_PREPARE_MEMORY", base.prepare_memory),
            prepare_bytes_per_worker=max(
                1, int(env.get("BPJ_PREPARE_BYTES_PER_WORKER", base.prepare_bytes_per_worker))
            ),
            prepare_max_workers=max(
                1, int(env.get("BPJ_PREPARE_MAX_WORKERS", base.prepare_max_workers))
            ),
            trainer_env_secret=env.get("BPJ_TRAINER_ENV_SECRET") or None,
            tmp_size_limit=env.get("BPJ_TMP_SIZE_LIMIT", base.tmp_size_limit),
            extra_trainer_env={
                key[len(prefix) :]: value for key, value in env.items() if key.startswith(prefix)
            },
        )


PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: What makes a kopf namespace pattern more than a name (kopf's select_specific_namespaces).
NAMESPACE_PATTERN_CHARS = "*?!,["


def _pull_policy(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in PULL_POLICIES:
        raise ValueError(
            f"BPJ_TRAINER_IMAGE_PULL_POLICY={raw!r} is not one of {', '.join(PULL_POLICIES)}"
        )
    return raw
