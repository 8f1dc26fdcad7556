"""A check of dynamic MIG on a machine with a MIG-capable NVIDIA GPU, through our code path.

    python -m hami.deviceplugin.mig_check --gpu 0 [--enable] [--config device-config.yaml]
    python -m hami.deviceplugin.mig_check --fake-devices FILE   # the same steps on the fake NVML

It uses the device plugin's own pieces (NVML backend, profile discovery, the MIG manager) and
the scheduler's profile choice, and leaves the GPU as it found it:

1. the GPU's MIG mode (with --enable: turned on if off; it may need a GPU reset);
2. refuses a GPU that already has GPU instances or processes (it never destroys others' work);
3. discovers the allowed profiles (memory, SM share, placements) as the plugin registers them;
4. places three requests as the scheduler does (smallest profile, then the next, then the
   smallest again), creates each instance (GPU instance + compute instance) and finds its
   MIG UUID; with nvidia-smi on the PATH, checks `nvidia-smi -L` lists it;
5. asks NVML for an instance overlapping one of them: it must refuse
   (NVML_ERROR_INSUFFICIENT_RESOURCES);
6. destroys the instances and checks none is left.

Exit status 0 when every step passed, 1 when one failed (the step says why), 2 on bad input.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hami.config import load_config
from hami.deviceplugin.backend import Backend, BackendError, GpuInfo
from hami.deviceplugin.mig import InstanceKey, MigError, MigManager, _profile_info, discover_profiles
from hami.errors import HamiError
from hami.model.mig import MigPlacement
from hami.vendors import nvidia_mig


class CheckFailed(Exception):
    pass


def step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def check(condition: bool, text: str) -> None:
    if not condition:
        raise CheckFailed(text)
    print(f"    ok: {text}", flush=True)


def pick(gpus: list[GpuInfo], wanted: str) -> GpuInfo:
    for gpu in gpus:
        if wanted in (str(gpu.index), gpu.uuid):
            return gpu
    raise HamiError(f"no GPU {wanted!r} (GPUs: {', '.join(f'{g.index} {g.uuid}' for g in gpus)})")


def run_check(backend: Backend, gpu_wanted: str, enable: bool, config_path: str | None,
              listed: Callable[[str], bool | None]) -> None:
    config = load_config(config_path)
    backend.init()
    try:
        gpu = pick(backend.devices(), gpu_wanted)
        step(1, f"GPU {gpu.index} {gpu.uuid} {gpu.name}")
        try:
            current, pending = backend.mig_mode(gpu.uuid)
        except BackendError as exc:
            raise CheckFailed(f"MIG mode: {exc} (not a MIG-capable GPU?)") from None
        print(f"    MIG mode: current {'on' if current else 'off'}, pending {'on' if pending else 'off'}")
        if not current:
            if not enable:
                raise CheckFailed("MIG mode is off; run again with --enable (as root) to turn it on")
            backend.set_mig_mode(gpu.uuid, True)
            current, pending = backend.mig_mode(gpu.uuid)
            check(current, "MIG mode turned on" if current else "MIG mode pending: reset the GPU and run again")
        step(2, "nothing else on the GPU")
        check(backend.gpu_instances(gpu.uuid) == [], "no GPU instance exists yet")
        check(not backend.busy(gpu.uuid), "no process runs on it")
        step(3, "profile discovery (what the device plugin registers)")
        allowed = config.nvidia.mig_profiles_for(gpu.name)
        check(bool(allowed), f"migProfileAllowlist covers {gpu.name}: {', '.join(allowed)}")
        profiles = discover_profiles(backend, gpu, allowed)
        check(bool(profiles), f"{len(profiles)} profile(s) discovered")
        for p in profiles:
            places = " ".join(f"{x.start}+{x.size}" for x in p.placements)
            print(f"    {p.name:<10} {p.memory:>7} MiB  {p.core:>3}% SMs  slices {p.slices}  placements {places}")
        indexes = {}
        for p in profiles:
            info = _profile_info(backend, gpu.uuid, p.name)
            if info is not None:
                indexes[p.name] = info.index
        manager = MigManager(backend, {gpu.uuid: indexes})
        step(4, "instances made as Allocate makes them, for the scheduler's choices")
        ordered = sorted(profiles, key=lambda p: (p.memory, p.slices))
        requests = [ordered[0].memory, ordered[min(1, len(ordered) - 1)].memory, ordered[0].memory]
        occupied: list[MigPlacement] = []
        made: list[InstanceKey] = []
        try:
            for memory in requests:
                found = nvidia_mig.select_candidate(profiles, occupied, memory)
                check(found is not None, f"a profile and placement for {memory} MiB")
                assert found is not None
                profile, placement = found
                occupied.append(placement)
                key = InstanceKey(gpu.uuid, profile.name, placement.start, placement.size)
                realized, created = manager.ensure(key)
                made.append(key)
                check(created and realized.mig_uuid.startswith("MIG-"),
                      f"{key.profile} at {key.start}+{key.size}: {realized.mig_uuid} "
                      f"(GPU instance {realized.gpu_instance}, compute instance {realized.compute_instance})")
                seen = listed(realized.mig_uuid)
                if seen is not None:
                    check(seen, "nvidia-smi -L lists it")
            step(5, "an overlapping instance is refused by NVML")
            first = made[0]
            try:
                backend.create_gpu_instance(gpu.uuid, indexes[first.profile], MigPlacement(first.start, first.size))
            except BackendError as exc:
                check(exc.code == "NVML_ERROR_INSUFFICIENT_RESOURCES", f"refused: {exc.code}")
            else:
                raise CheckFailed("NVML created an instance on a taken placement")
        finally:
            step(6, "instances destroyed")
            for key in made:
                check(manager.release(key), f"{key.profile} at {key.start}+{key.size} destroyed")
        check(backend.gpu_instances(gpu.uuid) == [], "no GPU instance is left")
    finally:
        backend.shutdown()


def nvidia_smi_lists(mig_uuid: str) -> bool | None:
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    return mig_uuid in result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="0", help="GPU index or UUID (default 0)")
    parser.add_argument("--enable", action="store_true", help="turn MIG mode on if it is off (root; may need a reset)")
    parser.add_argument("--config", help="device config with nvidia.migProfileAllowlist (default: HAMi's chart list)")
    parser.add_argument("--fake-devices", metavar="FILE", help="run on the fake NVML instead (no GPU needed)")
    args = parser.parse_args(argv)
    backend: Any
    if args.fake_devices:
        from hami.deviceplugin.fake import FakeBackend

        backend = FakeBackend(args.fake_devices)
    else:
        from hami.deviceplugin.nvml import NvmlBackend

        backend = NvmlBackend()
    try:
        run_check(backend, args.gpu, args.enable, args.config, (lambda _: None) if args.fake_devices
                  else nvidia_smi_lists)
    except (HamiError, BackendError) as exc:
        print(f"mig-check: error: {exc}", file=sys.stderr)
        return 2
    except (CheckFailed, MigError) as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    print("OK: MIG instances were made, refused and destroyed through hami's code path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
