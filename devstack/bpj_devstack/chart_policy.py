"""Regenerate the chart's progress-policy.yaml body from ``rbac.progress_policy()``.

    python -m bpj_devstack.chart_policy

The chart cannot call Python, so its template is this function's output with Helm
placeholders for the release's names; tests/chart checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bert_pretrain_operator.rbac import progress_policy

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    # The operator's own user: its token is pod-bound too when it runs in the cluster.
    operator = "system:serviceaccount:__NS__:__SA__"
    policy, binding = progress_policy([operator], name="__NAME__")
    out = []
    for obj in (policy, binding):
        text = yaml.safe_dump(obj, sort_keys=False, width=10**6)
        text = text.replace(
            "  name: __NAME__\n",
            '  name: __NAME__\n  labels:\n    {{- include "bpj.labels" . | nindent 4 }}\n',
            1,
        )
        out.append(text)
    body = "---\n".join(out)
    body = body.replace("__NAME__", '{{ include "bpj.progressPolicyName" . }}')
    body = body.replace("__NS__", "{{ .Release.Namespace }}").replace(
        "__SA__", '{{ include "bpj.serviceAccountName" . }}'
    )
    path = REPO / "charts/bert-pretrain-operator/templates/progress-policy.yaml"
    opening = "{{- if .Values.trainer.progressPolicy.enabled }}\n"
    old = path.read_text()
    head = old[: old.index(opening) + len(opening)]  # the template's own comment
    path.write_text(head + body + "{{- end }}\n")


if __name__ == "__main__":
    main()
