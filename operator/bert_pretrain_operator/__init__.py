"""bert-pretrain-operator: self-service BERT pretraining on GKE TPU slices.

A kopf operator for one custom resource, ``BertPretrainJob``
(``pretraining.bert.dev/v1alpha1``). Its layers, bottom up:

- ``tpu_catalogue``: facts about GKE TPU slices (plain data, sources cited);
- ``api``: the resource's pydantic models, the CRD generated from them, and the
  offline validation that mirrors admission;
- ``render`` / ``decide``: pure functions from (spec, status, observed children)
  to the desired children and the next status;
- the kopf handlers and the one module that talks to the Kubernetes API;
- ``cli``: the ``bpj`` command (validate, crd, render).
"""
