"""The local development stack: a real Kubernetes control plane and a GCS emulator.

Everything here is development and test tooling. It builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, KWOK and fake-gcs-server from their
published Go modules (never release binaries), caches the binaries outside the
repository, and runs them as local processes on loopback.
"""
