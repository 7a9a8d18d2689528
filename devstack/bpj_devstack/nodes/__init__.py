"""Real nodes of the local stack: kubelets with containerd, kube-proxy and CoreDNS.

Pods bound to these nodes run as real containers, from real images, exactly as the
kubelet runs them on GKE: a pod sandbox and network namespace per pod (runc, CNI
bridge), the service-account token and ConfigMaps mounted by the kubelet, uid and
read-only root filesystem enforced by the runtime, ``kubectl logs`` served by the
kubelet. KWOK's fake nodes stay for scale and chaos; these are for the pods that
must really run (the demo, the end-to-end tests).

Everything here is machine-global (network interfaces, iptables, cgroups, mounts),
so at most one stack with real nodes runs on a machine at a time, and ``host.sweep``
removes what an earlier, killed stack left behind, whichever checkout started it.
Upstream parts do the work: the kubelet and kube-proxy of the control plane's
release, containerd, runc and the CNI plugins from Debian, CoreDNS from its module.
This package only writes their configuration and starts them, as kubernetes'
``hack/local-up-cluster.sh`` does.
"""
