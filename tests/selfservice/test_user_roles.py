"""User roles: `edit` in a namespace submits and watches jobs there, and nothing of the operator's.

The chart's `<fullname>-view` and `<fullname>-edit` ClusterRoles are aggregated into the
built-in view, edit and admin roles; the `platform` fixture binds alice (through her
group) to `edit`, bob to `view` and carol to `admin` in team A only. Checked with
`kubectl auth can-i` (RBAC's answer) and with real requests made as those users.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.selfservice.conftest import (
    TEAM_A_GROUP,
    Platform,
    conforming_job,
)
from tests.support import Kubectl, kubectl_json, wait_for

BPJ = "bertpretrainjobs.pretraining.bert.dev"


def can_i(kubectl: Kubectl, user: tuple[str, ...], verb: str, resource: str, *flags: str) -> bool:
    out = kubectl("auth", "can-i", verb, resource, *user, *flags, check=False)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stderr
    return answer == "yes"


@pytest.fixture(scope="module")
def aggregated(kubectl: Kubectl, platform: Platform) -> Platform:
    """The aggregation controller has copied the chart's rules into view, edit and admin."""

    def copied() -> bool:
        return all(
            any(
                "pretraining.bert.dev" in (rule.get("apiGroups") or [])
                for rule in kubectl_json(kubectl, "get", "clusterrole", role).get("rules") or []
            )
            for role in ("view", "edit", "admin")
        )

    wait_for(copied, 30, "aggregation into view, edit and admin")
    return platform


def test_chart_roles_are_aggregated_into_the_built_in_roles(
    kubectl: Kubectl, aggregated: Platform
) -> None:
    rules = {
        role: [
            r
            for r in kubectl_json(kubectl, "get", "clusterrole", role)["rules"]
            if "pretraining.bert.dev" in (r.get("apiGroups") or [])
        ]
        for role in ("view", "edit", "admin")
    }
    view_verbs = {v for r in rules["view"] for v in r["verbs"]}
    assert view_verbs == {"get", "list", "watch"}
    for role in ("edit", "admin"):
        writes = {
            v for r in rules[role] if "bertpretrainjobs" in r["resources"] for v in r["verbs"]
        }
        assert {"create", "update", "patch", "delete", "deletecollection"} <= writes
        status_verbs = {
            v
            for r in rules[role]
            if "bertpretrainjobs/status" in r["resources"]
            for v in r["verbs"]
        }
        assert status_verbs == {"get", "list", "watch"}, role


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    def flags(self) -> tuple[str, ...]:
        return (f"--as={self.name}", *(f"--as-group={g}" for g in self.groups))


ALICE, BOB, CAROL = User("alice", (TEAM_A_GROUP,)), User("bob"), User("carol")
ALL_NAMESPACES = ""


@dataclass(frozen=True)
class Ask:
    user: User
    verb: str
    resource: str
    """resource.group, as `kubectl auth can-i` takes it."""
    namespace: str
    subresource: str = ""

    def review(self) -> dict[str, Any]:
        """The SubjectAccessReview `kubectl auth can-i --as ... --as-group ...` amounts to."""
        resource, _, group = self.resource.partition(".")
        attributes = {"verb": self.verb, "resource": resource, "group": group}
        if self.namespace:
            attributes["namespace"] = self.namespace
        if self.subresource:
            attributes["subresource"] = self.subresource
        return {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.user.name,
                "groups": [*self.user.groups, "system:authenticated"],
                "resourceAttributes": attributes,
            },
        }

    def __str__(self) -> str:
        where = f"-n {self.namespace}" if self.namespace else "--all-namespaces"
        sub = f" --subresource={self.subresource}" if self.subresource else ""
        return f"{' '.join(self.user.flags())} {self.verb} {self.resource} {where}{sub}"


def _expectations(p: Platform) -> list[tuple[Ask, bool]]:
    a, b, system = p.team_a, p.team_b, p.operator_namespace
    yes, no = True, False
    return [
        # alice: edit in team A. Jobs there, all of it but the status.
        *(
            (Ask(ALICE, verb, BPJ, a), yes)
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
        ),
        (Ask(ALICE, "deletecollection", BPJ, a), yes),
        (Ask(ALICE, "get", BPJ, a, "status"), yes),
        (Ask(ALICE, "patch", BPJ, a, "status"), no),
        (Ask(ALICE, "update", BPJ, a, "status"), no),
        # Nothing in team B, nor across namespaces.
        *((Ask(ALICE, verb, BPJ, b), no) for verb in ("get", "list", "watch", "create", "delete")),
        (Ask(ALICE, "list", BPJ, ALL_NAMESPACES), no),
        # Nothing of the operator's: its namespace, RBAC, policies, CRDs, peering.
        (Ask(ALICE, "get", "deployments.apps", system), no),
        (Ask(ALICE, "update", "deployments.apps", system), no),
        (Ask(ALICE, "create", "serviceaccounts", system, "token"), no),
        (Ask(ALICE, "get", "configmaps", system), no),
        (Ask(ALICE, "update", "clusterroles.rbac.authorization.k8s.io", ""), no),
        (Ask(ALICE, "create", "clusterrolebindings.rbac.authorization.k8s.io", ""), no),
        (Ask(ALICE, "update", "validatingadmissionpolicies.admissionregistration.k8s.io", ""), no),
        (
            Ask(
                ALICE,
                "delete",
                "validatingadmissionpolicybindings.admissionregistration.k8s.io",
                "",
            ),
            no,
        ),
        (Ask(ALICE, "patch", "customresourcedefinitions.apiextensions.k8s.io", ""), no),
        (Ask(ALICE, "patch", "kopfpeerings.kopf.dev", a), no),
        # edit may not grant itself more: no Roles or RoleBindings in its namespace.
        (Ask(ALICE, "create", "rolebindings.rbac.authorization.k8s.io", a), no),
        # bob: view in team A. Reads jobs and their status, writes nothing.
        *((Ask(BOB, verb, BPJ, a), yes) for verb in ("get", "list", "watch")),
        (Ask(BOB, "get", BPJ, a, "status"), yes),
        *((Ask(BOB, verb, BPJ, a), no) for verb in ("create", "update", "patch", "delete")),
        (Ask(BOB, "patch", BPJ, a, "status"), no),
        (Ask(BOB, "get", BPJ, b), no),
        # carol: admin in team A. What edit may, still not the status.
        (Ask(CAROL, "create", BPJ, a), yes),
        (Ask(CAROL, "deletecollection", BPJ, a), yes),
        (Ask(CAROL, "patch", BPJ, a, "status"), no),
        (Ask(CAROL, "create", BPJ, b), no),
    ]


def _json_stream(text: str) -> list[dict[str, Any]]:
    """The objects `kubectl create -o json` prints one after another for a List."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        obj, end = decoder.raw_decode(text, at)
        objects.append(obj)
        at = end + (len(text[end:]) - len(text[end:].lstrip()))
    return objects


def test_can_i_as_the_teams_members(kubectl: Kubectl, aggregated: Platform) -> None:
    """The headline answers, exactly as a platform engineer would ask them."""
    p = aggregated
    assert can_i(kubectl, ALICE.flags(), "create", BPJ, "-n", p.team_a)
    assert can_i(kubectl, ALICE.flags(), "watch", BPJ, "-n", p.team_a)
    assert not can_i(kubectl, ALICE.flags(), "create", BPJ, "-n", p.team_b)
    assert not can_i(kubectl, ALICE.flags(), "patch", BPJ, "-n", p.team_a, "--subresource=status")
    assert not can_i(
        kubectl, ALICE.flags(), "update", "deployments.apps", "-n", p.operator_namespace
    )
    assert can_i(kubectl, BOB.flags(), "list", BPJ, "-n", p.team_a)
    assert not can_i(kubectl, BOB.flags(), "create", BPJ, "-n", p.team_a)


def test_roles_grant_exactly_jobs_in_the_teams_namespace(
    kubectl: Kubectl, aggregated: Platform
) -> None:
    """The whole matrix, in one request: a List of SubjectAccessReviews."""
    cases = _expectations(aggregated)
    reviews = {"apiVersion": "v1", "kind": "List", "items": [ask.review() for ask, _ in cases]}
    out = kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(reviews)).stdout
    answers = [bool(review["status"].get("allowed")) for review in _json_stream(out)]
    assert len(answers) == len(cases)
    wrong = [
        f"{ask}: expected {'yes' if expected else 'no'}"
        for (ask, expected), answer in zip(cases, answers, strict=True)
        if answer != expected
    ]
    assert not wrong, "\n".join(wrong)


def test_alice_submits_and_watches_jobs_in_her_namespace_only(
    kubectl: Kubectl, aggregated: Platform
) -> None:
    p = aggregated
    doc = json.dumps(conforming_job("alices-run"))
    kubectl("apply", "-n", p.team_a, *ALICE.flags(), "-f", "-", stdin=doc)
    listed = kubectl("get", "bpj", "-n", p.team_a, *ALICE.flags()).stdout
    assert "alices-run" in listed
    assert "alices-run" in kubectl("get", "bpj", "alices-run", "-n", p.team_a, *BOB.flags()).stdout

    elsewhere = kubectl("apply", "-n", p.team_b, *ALICE.flags(), "-f", "-", stdin=doc, check=False)
    assert elsewhere.returncode != 0
    assert "forbidden" in elsewhere.stderr.lower(), elsewhere.stderr
    status = kubectl(
        "patch",
        "bpj",
        "alices-run",
        "-n",
        p.team_a,
        *ALICE.flags(),
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Succeeded"}}',
        check=False,
    )
    assert status.returncode != 0 and "forbidden" in status.stderr.lower(), status.stderr
    bob = kubectl("delete", "bpj", "alices-run", "-n", p.team_a, *BOB.flags(), check=False)
    assert bob.returncode != 0 and "forbidden" in bob.stderr.lower(), bob.stderr
    kubectl("delete", "bpj", "alices-run", "-n", p.team_a, *ALICE.flags())
