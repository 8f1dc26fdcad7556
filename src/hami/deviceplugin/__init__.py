"""The NVIDIA device plugin and node agent: kubelet's v1beta1 gRPC API, GPU discovery, Allocate."""
