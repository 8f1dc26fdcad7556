"""NVIDIA's MIG geometry of the GPUs the fake backend models, as NVML reports it.

Profiles, instance counts, slices and placements follow NVIDIA's MIG user guide ("Supported MIG
Profiles": A100, H100, H200 have 8 memory slices and 7 compute slices). Memory and SM counts
are what `nvidia-smi mig -lgip` prints for the A100 and H100; the H200's are its memory
fractions (1/8, 2/8, 4/8, 8/8) of the 143771 MiB NVML reports, less the same share the H100
loses, rounded to MiB, as no H200 reading was at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from hami.deviceplugin.backend import (
    GI_PROFILE_1_SLICE,
    GI_PROFILE_1_SLICE_REV1,
    GI_PROFILE_1_SLICE_REV2,
    GI_PROFILE_2_SLICE,
    GI_PROFILE_3_SLICE,
    GI_PROFILE_4_SLICE,
    GI_PROFILE_7_SLICE,
)
from hami.model.mig import MigPlacement


@dataclass(frozen=True)
class GeometryProfile:
    index: int  # NVML_GPU_INSTANCE_PROFILE_*
    id: int  # NVML profile ID
    name: str  # without the "MIG " prefix
    slices: int
    instances: int
    sm_count: int
    memory_mib: int
    placements: tuple[MigPlacement, ...]


@dataclass(frozen=True)
class Geometry:
    model: str
    # Substrings of NVML's device name that select this geometry.
    names: tuple[str, ...]
    profiles: tuple[GeometryProfile, ...]

    def profile(self, index: int) -> GeometryProfile | None:
        return next((p for p in self.profiles if p.index == index), None)


def _starts(size: int, *starts: int) -> tuple[MigPlacement, ...]:
    return tuple(MigPlacement(s, size) for s in starts)


# Placements are the same on every 8-slice GPU.
_ONE = _starts(1, 0, 1, 2, 3, 4, 5, 6)
_ONE_WIDE = _starts(2, 0, 2, 4, 6)
_TWO = _starts(2, 0, 2, 4)
_THREE = _starts(4, 0, 4)
_FOUR = _starts(4, 0)
_SEVEN = _starts(8, 0)


def _geometry(model: str, names: tuple[str, ...], sizes: tuple[str, str, str, str, str],
              sms: tuple[int, int, int, int, int, int], memory: tuple[int, int, int, int]) -> Geometry:
    """sizes: memory names of 1g, 1g double, 2g, 3g/4g, 7g; sms: 1g, 1g double, 2g, 3g, 4g, 7g;
    memory: MiB of 1g, 2g (= 1g double), 3g/4g, 7g."""
    one, one_wide, two, half, whole = sizes
    m1, m2, m4, m8 = memory
    return Geometry(model, names, (
        GeometryProfile(GI_PROFILE_1_SLICE, 19, f"1g.{one}", 1, 7, sms[0], m1, _ONE),
        GeometryProfile(GI_PROFILE_1_SLICE_REV1, 20, f"1g.{one}+me", 1, 1, sms[0], m1, _ONE),
        GeometryProfile(GI_PROFILE_1_SLICE_REV2, 15, f"1g.{one_wide}", 1, 4, sms[1], m2, _ONE_WIDE),
        GeometryProfile(GI_PROFILE_2_SLICE, 14, f"2g.{two}", 2, 3, sms[2], m2, _TWO),
        GeometryProfile(GI_PROFILE_3_SLICE, 9, f"3g.{half}", 3, 2, sms[3], m4, _THREE),
        GeometryProfile(GI_PROFILE_4_SLICE, 5, f"4g.{half}", 4, 1, sms[4], m4, _FOUR),
        GeometryProfile(GI_PROFILE_7_SLICE, 0, f"7g.{whole}", 7, 1, sms[5], m8, _SEVEN),
    ))


A100_40GB = _geometry("A100-40GB", ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100-40GB"),
                      ("5gb", "10gb", "10gb", "20gb", "40gb"), (14, 14, 28, 42, 56, 98), (4864, 9984, 20096, 40192))
A100_80GB = _geometry("A100-80GB", ("A100-SXM4-80GB", "A100-PCIE-80GB", "A100 80GB", "A100-80GB"),
                      ("10gb", "20gb", "20gb", "40gb", "80gb"), (14, 14, 28, 42, 56, 98), (9728, 19968, 40192, 81152))
H100_80GB = _geometry("H100-80GB", ("H100 80GB HBM3", "H100 PCIe", "H100-SXM5-80GB", "H100-PCIE-80GB"),
                      ("10gb", "20gb", "20gb", "40gb", "80gb"), (16, 26, 32, 60, 64, 132), (9984, 20096, 40448, 81152))
H200_141GB = _geometry("H200-141GB", ("H200",),
                       ("18gb", "35gb", "35gb", "71gb", "141gb"), (16, 26, 32, 60, 64, 132),
                       (17600, 35456, 71296, 143104))

GEOMETRIES = (A100_40GB, A100_80GB, H100_80GB, H200_141GB)


def geometry_for(name: str) -> Geometry | None:
    """The MIG geometry of a GPU by NVML's name; None for a GPU without MIG."""
    for geometry in GEOMETRIES:
        if any(n in name for n in geometry.names):
            return geometry
    return None
