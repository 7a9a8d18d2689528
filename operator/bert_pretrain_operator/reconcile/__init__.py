"""The operator's pure core: observe children, decide the next status and actions.

Nothing here talks to Kubernetes or GCS; ``bert_pretrain_operator.kube`` feeds it
the objects it read and carries out what it decided.
"""
