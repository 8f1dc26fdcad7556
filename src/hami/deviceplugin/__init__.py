"""The device plugin and node agent: kubelet's v1beta1 gRPC API, device discovery per vendor, Allocate."""
