"""Plain data shared by every part of hami: devices, requests and allocations."""

from hami.model.allocation import ContainerDevice, PodAllocation
from hami.model.devices import DeviceInfo, NodeDevices
from hami.model.requests import ContainerRequest, PodRequest

__all__ = [
    "ContainerDevice",
    "ContainerRequest",
    "DeviceInfo",
    "NodeDevices",
    "PodAllocation",
    "PodRequest",
]
