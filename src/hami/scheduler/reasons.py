"""Why a node does not fit: HAMi's reason names and the `"N/M Reason"` text kube-scheduler shows."""

from __future__ import annotations

CARD_NOT_HEALTH = "CardNotHealth"
CARD_CORDONED = "CardCordoned"
CARD_TYPE_MISMATCH = "CardTypeMismatch"
CARD_UUID_MISMATCH = "CardUuidMismatch"
CARD_TIME_SLICING_EXHAUSTED = "CardTimeSlicingExhausted"
CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT = "ExclusiveDeviceAllocateConflict"
CARD_COMPUTE_UNITS_EXHAUSTED = "CardComputeUnitsExhausted"
NUMA_NOT_FIT = "NumaNotFit"
ALLOCATED_CARDS_INSUFFICIENT_REQUEST = "AllocatedCardsInsufficientRequest"
NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
NODE_INSUFFICIENT_CPU = "NodeInsufficientCPU"
NODE_INSUFFICIENT_MEMORY = "NodeInsufficientMemory"
NODE_UNREGISTERED = "node unregistered"
# Vendor-specific device checks (HAMi's common and MetaX reason names).
MODE_NOT_FIT = "ModeNotFit"
CARD_NOT_FOUND_CUSTOM_FILTER_RULE = "CardNotFoundCustomFilterRule"
CARD_MIG_TOPOLOGY_INFEASIBLE = "CardMigTopologyInfeasible"
CARD_UNHEALTHY = "CardUnhealthy"
CARD_QOS_POLICY_MISMATCH = "CardQosPolicyMismatch"
CARD_APP_CLASS_MISMATCH = "CardAppClassMismatch"
RESOURCE_QUOTA_NOT_FIT = "ResourceQuotaNotFit"

# Per-device checks in the order HAMi runs them; a device counts under the first that fails.
# Code 0 means the device passed every check.
DEVICE_CHECKS = (
    CARD_NOT_HEALTH,
    CARD_CORDONED,
    CARD_TYPE_MISMATCH,
    CARD_UUID_MISMATCH,
    CARD_TIME_SLICING_EXHAUSTED,
    CARD_INSUFFICIENT_MEMORY,
    CARD_INSUFFICIENT_CORE,
    EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT,
    CARD_COMPUTE_UNITS_EXHAUSTED,
)
# Checks only some vendors make; their codes follow the generic ones.
VENDOR_CHECKS = (
    MODE_NOT_FIT,
    CARD_UNHEALTHY,
    CARD_APP_CLASS_MISMATCH,
    CARD_QOS_POLICY_MISMATCH,
    CARD_NOT_FOUND_CUSTOM_FILTER_RULE,
    CARD_MIG_TOPOLOGY_INFEASIBLE,
    RESOURCE_QUOTA_NOT_FIT,
)
CHECKS = (*DEVICE_CHECKS, *VENDOR_CHECKS)
CODE_OF = {name: code for code, name in enumerate(CHECKS, start=1)}
# Reasons listed in this order in a node's message.
REPORT_ORDER = (*CHECKS, NUMA_NOT_FIT, ALLOCATED_CARDS_INSUFFICIENT_REQUEST)


def format_reason(counts: dict[str, int], devices: int) -> str:
    """`"2/2 CardInsufficientMemory"`, several joined by `", "` in check order."""
    parts = [f"{counts[name]}/{devices} {name}" for name in REPORT_ORDER if counts.get(name)]
    return ", ".join(parts)
