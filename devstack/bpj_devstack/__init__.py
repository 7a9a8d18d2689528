"""The local development stack: a real Kubernetes control plane, real nodes, a GCS emulator.

Everything here is development and test tooling. It builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the kubelet, kube-proxy, KWOK, CoreDNS and
fake-gcs-server from their published Go modules (never release binaries), caches the
binaries outside the repository, builds the product's images with buildah, and runs
it all as local processes: on loopback, and on a host address of its own where pods
on the real nodes (``nodes/``) can reach it.
"""
