"""Dynamic MIG on the node: the fake NVML's MIG model and its errors, discovery, instance
creation at Allocate (over real gRPC, kubelet's proto), cleanup, and adoption after a restart."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from hami.annotations import keys
from hami.annotations.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami.config import HamiConfig, NodeOverride, NvidiaConfig, parse_config
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.backend import GI_PROFILE_1_SLICE, GI_PROFILE_2_SLICE, GI_PROFILE_3_SLICE, BackendError
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.mig import InstanceKey, MigError, MigManager, MigNode
from hami.deviceplugin.pods import InMemoryPodSource, PodSourceError
from hami.errors import HamiError
from hami.model.mig import MigPlacement
from tests.unit.test_deviceplugin_support import NODE, gpu_pod, running_plugin, wait_until

A100 = "GPU-a100-0000-0000-0000-000000000001"
A100_B = "GPU-a100-0000-0000-0000-000000000002"
T4 = "GPU-t400-0000-0000-0000-000000000003"


def a100(uuid: str = A100, **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "name": "NVIDIA A100-SXM4-40GB", "memory": 40960, "smCount": 108, **extra}


def backend(*devices: dict[str, Any]) -> FakeBackend:
    fake = FakeBackend(data={"devices": list(devices)})
    fake.init()
    return fake


def code(exc: pytest.ExceptionInfo[BackendError]) -> str:
    return exc.value.code


# ---- the fake NVML --------------------------------------------------------------------------

def test_fake_mig_errors_follow_nvml() -> None:
    fake = backend(a100(), {"uuid": T4, "name": "Tesla T4", "memory": 15360})
    with pytest.raises(BackendError) as e:
        fake.mig_mode(T4)
    assert code(e) == "NVML_ERROR_NOT_SUPPORTED"
    assert fake.mig_mode(A100) == (False, False)
    with pytest.raises(BackendError) as e:
        fake.gi_profile(A100, GI_PROFILE_1_SLICE)  # MIG mode off
    assert code(e) == "NVML_ERROR_NOT_SUPPORTED"
    fake.set_mig_mode(A100, True)
    info = fake.gi_profile(A100, GI_PROFILE_1_SLICE)
    assert (info.id, info.name, info.instances, info.sm_count, info.memory_mib) == (19, "MIG 1g.5gb", 7, 14, 4864)
    with pytest.raises(BackendError) as e:
        fake.gi_profile(A100, 6)  # 6-slice: not on an A100
    assert code(e) == "NVML_ERROR_NOT_SUPPORTED"
    with pytest.raises(BackendError) as e:
        fake.create_gpu_instance(A100, GI_PROFILE_2_SLICE, MigPlacement(1, 2))  # not a listed placement
    assert code(e) == "NVML_ERROR_INVALID_ARGUMENT"
    gi = fake.create_gpu_instance(A100, GI_PROFILE_3_SLICE, MigPlacement(4, 4))
    with pytest.raises(BackendError) as e:
        fake.create_gpu_instance(A100, GI_PROFILE_1_SLICE, MigPlacement(5, 1))  # overlaps the 3g
    assert code(e) == "NVML_ERROR_INSUFFICIENT_RESOURCES"
    ci = fake.create_compute_instance(A100, gi, 2)
    with pytest.raises(BackendError) as e:
        fake.create_compute_instance(A100, gi, 2)
    assert code(e) == "NVML_ERROR_INSUFFICIENT_RESOURCES"
    [instance] = fake.gpu_instances(A100)
    assert instance.placement == MigPlacement(4, 4) and instance.mig_uuid.startswith("MIG-")
    with pytest.raises(BackendError) as e:
        fake.destroy_gpu_instance(A100, gi)  # it still has a compute instance
    assert code(e) == "NVML_ERROR_IN_USE"
    fake.set_busy(instance.mig_uuid)
    assert fake.busy(A100)
    with pytest.raises(BackendError) as e:
        fake.destroy_compute_instance(A100, gi, ci)
    assert code(e) == "NVML_ERROR_IN_USE"
    with pytest.raises(BackendError) as e:
        fake.set_mig_mode(A100, False)
    assert code(e) == "NVML_ERROR_IN_USE"
    fake.set_busy(instance.mig_uuid, False)
    fake.destroy_compute_instance(A100, gi, ci)
    fake.destroy_gpu_instance(A100, gi)
    with pytest.raises(BackendError) as e:
        fake.destroy_gpu_instance(A100, gi)
    assert code(e) == "NVML_ERROR_NOT_FOUND"
    # Two 3g instances at most, wherever they go.
    fake.create_gpu_instance(A100, GI_PROFILE_3_SLICE, MigPlacement(0, 4))
    fake.create_gpu_instance(A100, GI_PROFILE_3_SLICE, MigPlacement(4, 4))
    assert len(fake.gpu_instances(A100)) == 2


def test_fake_mig_mode_may_wait_for_a_reset() -> None:
    fake = backend(a100(migResetRequired=True))
    fake.set_mig_mode(A100, True)
    assert fake.mig_mode(A100) == (False, True)


@pytest.mark.parametrize(("extra", "message"), [
    ({"migInstances": [{"profile": "2g.10gb", "start": 0}]}, "need migMode: enabled"),
    ({"migMode": "enabled", "migInstances": [{"profile": "2g.20gb", "start": 0}]}, "is not one of A100-40GB's"),
    ({"migMode": "enabled", "migInstances": [{"profile": "2g.10gb", "start": 1}]}, "cannot start at 1"),
    ({"migMode": "enabled", "migInstances": [{"profile": "3g.20gb", "start": 0}, {"profile": "4g.20gb", "start": 0}]},
     "INSUFFICIENT_RESOURCES"),
    ({"migMode": "on"}, "migMode must be enabled or disabled"),
])
def test_fake_mig_file_errors(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(HamiError, match=message):
        FakeBackend(data={"devices": [a100(**extra)]})
    with pytest.raises(HamiError, match="has no MIG"):
        FakeBackend(data={"devices": [{"uuid": T4, "name": "Tesla T4", "memory": 1, "migMode": "enabled"}]})


# ---- the manager ----------------------------------------------------------------------------

def manager(fake: FakeBackend) -> MigManager:
    return MigManager(fake, {A100: {"1g.5gb": GI_PROFILE_1_SLICE, "2g.10gb": GI_PROFILE_2_SLICE,
                                    "3g.20gb": GI_PROFILE_3_SLICE}})


def test_ensure_is_idempotent_and_exact() -> None:
    fake = backend(a100(migMode="enabled"))
    m = manager(fake)
    key = InstanceKey(A100, "2g.10gb", 2, 2)
    first, created = m.ensure(key)
    again, created_again = m.ensure(key)
    assert created and not created_again and first == again
    [instance] = fake.gpu_instances(A100)
    assert (instance.placement, instance.mig_uuid, instance.compute_instance_ids) == (
        MigPlacement(2, 2), first.mig_uuid, (first.compute_instance,))
    with pytest.raises(MigError, match="NVML does not list this placement"):
        m.ensure(InstanceKey(A100, "2g.10gb", 1, 2))
    with pytest.raises(MigError, match="does not offer 4g.20gb"):
        m.ensure(InstanceKey(A100, "4g.20gb", 0, 4))
    with pytest.raises(MigError, match="INSUFFICIENT_RESOURCES"):
        m.ensure(InstanceKey(A100, "1g.5gb", 3, 1))  # inside the 2g
    assert len(fake.gpu_instances(A100)) == 1


def test_a_half_made_instance_is_destroyed() -> None:
    fake = backend(a100(migMode="enabled"))
    fake.fail_next("create_compute_instance", "NVML_ERROR_UNKNOWN")
    with pytest.raises(MigError, match="NVML_ERROR_UNKNOWN"):
        manager(fake).ensure(InstanceKey(A100, "1g.5gb", 6, 1))
    assert fake.gpu_instances(A100) == []


def test_ensure_needs_mig_mode() -> None:
    fake = backend(a100())
    with pytest.raises(MigError, match="MIG mode is off"):
        manager(fake).ensure(InstanceKey(A100, "1g.5gb", 6, 1))


def test_reconcile_destroys_only_stale_idle_instances() -> None:
    fake = backend(a100(migMode="enabled"))
    m = manager(fake)
    keep, stale, busy = (InstanceKey(A100, "1g.5gb", s, 1) for s in (6, 5, 4))
    for key in (keep, stale, busy):
        m.ensure(key)
    fake.set_busy(m.managed[busy].mig_uuid)
    assert m.reconcile([keep]) == [stale]
    assert set(m.managed) == {keep, busy}  # the busy one is kept (NVML_ERROR_IN_USE) and tried again
    fake.set_busy(m.managed[busy].mig_uuid, False)
    assert m.reconcile([keep]) == [busy]
    assert [i.placement.start for i in fake.gpu_instances(A100)] == [6]


# ---- start, adoption, cleanup ---------------------------------------------------------------

def reserved_pod(name: str, reservations: list[MigAllocation], phase: str = "Running", node: str = NODE,
                 allocated: str | None = None) -> dict[str, Any]:
    devices = allocated or "".join(f"{r.gpu_uuid},NVIDIA,4864,15:" for r in reservations) + ";"
    pod = gpu_pod(name, [("main", len(reservations))], devices, node=node)
    pod["metadata"]["annotations"][keys.MIG_ALLOCATIONS] = encode_mig_allocations(reservations)
    pod["status"] = {"phase": phase}
    return pod


def reservation(gpu: str, profile: str, start: int, size: int, device: int = 0, **runtime: Any) -> MigAllocation:
    return MigAllocation(0, device, gpu, profile, MigPlacement(start, size), **runtime)


def test_start_empties_idle_gpus_and_adopts_live_instances() -> None:
    fake = backend(
        a100(A100, migMode="enabled", migInstances=[{"profile": "2g.10gb", "start": 0},
                                                    {"profile": "1g.5gb", "start": 6}]),
        a100(A100_B, migMode="enabled", migInstances=[{"profile": "3g.20gb", "start": 4}]),
    )
    live_instance = next(i for i in fake.gpu_instances(A100) if i.placement.start == 0)
    realized = reservation(A100, "2g.10gb", 0, 2, mig_uuid=live_instance.mig_uuid,
                           gpu_instance_id=live_instance.gpu_instance_id, compute_instance_id=0)
    source = InMemoryPodSource([reserved_pod("live", [realized]),
                                reserved_pod("done", [reservation(A100_B, "3g.20gb", 4, 4)], phase="Succeeded")],
                               nodes={NODE: {}})
    node = MigNode(fake, source, NODE, [A100, A100_B])
    node.start()
    # A100 is reserved by a live pod: left as it is, its annotated instance adopted; A100_B emptied.
    assert [i.placement.start for i in fake.gpu_instances(A100)] == [0, 6]
    assert fake.gpu_instances(A100_B) == []
    assert list(node.manager.managed) == [InstanceKey(A100, "2g.10gb", 0, 2)]
    # The unannotated 1g at 6 is not ours: cleanup leaves it; the live pod's goes with the pod.
    source.pods[("default", "live")]["status"]["phase"] = "Failed"
    assert node.cleanup() == [InstanceKey(A100, "2g.10gb", 0, 2)]
    assert [i.placement.start for i in fake.gpu_instances(A100)] == [6]


def test_start_without_the_pod_list_empties_nothing() -> None:
    fake = backend(a100(migMode="enabled", migInstances=[{"profile": "1g.5gb", "start": 6}]))

    class Down(InMemoryPodSource):
        def pods_on_node(self, node: str) -> list[dict[str, Any]]:
            raise PodSourceError("connection refused")

    MigNode(fake, Down(nodes={NODE: {}}), NODE, [A100]).start()
    assert len(fake.gpu_instances(A100)) == 1


def test_start_leaves_busy_gpus_and_enables_mig_on_idle_ones() -> None:
    fake = backend(a100(A100, migMode="enabled", migInstances=[{"profile": "1g.5gb", "start": 6, "busy": True}]),
                   a100(A100_B))
    MigNode(fake, InMemoryPodSource(nodes={NODE: {}}), NODE, [A100, A100_B]).start()
    assert len(fake.gpu_instances(A100)) == 1  # a process runs there
    assert fake.mig_mode(A100_B) == (True, True)


def test_adoption_checks_nvml() -> None:
    fake = backend(a100(migMode="enabled", migInstances=[{"profile": "1g.5gb", "start": 6}]))
    [instance] = fake.gpu_instances(A100)
    wrong = reservation(A100, "1g.5gb", 6, 1, mig_uuid="MIG-someone-else", gpu_instance_id=instance.gpu_instance_id,
                        compute_instance_id=0)
    with pytest.raises(MigError, match="is not live"):
        manager(fake).adopt(wrong)


def test_cleanup_fails_closed() -> None:
    fake = backend(a100(migMode="enabled"))
    source = InMemoryPodSource([reserved_pod("p", [reservation(A100, "1g.5gb", 6, 1)])], nodes={NODE: {}})
    node = MigNode(fake, source, NODE, [A100])
    node.manager.profiles = manager(fake).profiles
    node.manager.ensure(InstanceKey(A100, "1g.5gb", 6, 1))
    node.manager.ensure(InstanceKey(A100, "1g.5gb", 5, 1))  # nobody's
    source.pods[("default", "p")]["metadata"]["annotations"][keys.MIG_ALLOCATIONS] = "[{"
    with pytest.raises(ValueError, match="invalid JSON"):
        node.cleanup()  # a malformed annotation: nothing destroyed
    assert len(fake.gpu_instances(A100)) == 2
    source.pods[("default", "p")]["metadata"]["annotations"][keys.MIG_ALLOCATIONS] = encode_mig_allocations(
        [reservation(A100, "1g.5gb", 6, 1)])
    assert node.cleanup() == [InstanceKey(A100, "1g.5gb", 5, 1)]
    del source.pods[("default", "p")]
    assert node.cleanup() == [InstanceKey(A100, "1g.5gb", 6, 1)]
    assert fake.gpu_instances(A100) == []


# ---- the plugin over gRPC -------------------------------------------------------------------

def mig_config(**override: Any) -> HamiConfig:
    config = parse_config({"nvidia": {"deviceSplitCount": 4},
                           "nodeconfig": [{"name": NODE, "operatingmode": "mig", **override}]})
    assert config.nodeconfig[0] == NodeOverride(name=NODE, operatingmode="mig",
                                                migdevices=config.nodeconfig[0].migdevices)
    return config


MIXED = {"devices": [a100(A100, migMode="enabled", nvlink=[A100_B]), a100(A100_B, nvlink=[A100]),
                     {"uuid": T4, "name": "Tesla T4", "memory": 15360, "numa": 1}]}


def allocate(stub: Any, *containers: list[str]) -> Any:
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers])
    return stub.Allocate(request, timeout=5)


def test_mig_node_registers_profiles_beside_shared_gpus() -> None:
    with running_plugin(config=mig_config(migdevices={"index": [0, 2]}), gpus=MIXED) as h:
        registered = json.loads(wait_until(lambda: h.source.nodes[NODE].get(keys.NODE_NVIDIA_REGISTER)))
        by_id = {d["id"]: d for d in registered}
        assert by_id[A100]["mode"] == "mig" and by_id[A100]["count"] == 7 and by_id[A100]["devmem"] == 40960
        assert [p["name"] for p in by_id[A100]["migProfiles"]] == ["1g.5gb", "2g.10gb", "3g.20gb", "7g.40gb"]
        assert by_id[A100]["migProfiles"][1] == {"name": "2g.10gb", "memoryMB": 9984, "core": 29, "sliceCount": 2,
                                                 "placements": [{"start": 0, "size": 2}, {"start": 2, "size": 2},
                                                                {"start": 4, "size": 2}]}
        # Not chosen by migdevices (A100_B) or not covered by the allowlist (T4): shared, as ever.
        assert by_id[A100_B]["mode"] == by_id[T4]["mode"] == "hami-core" and "migProfiles" not in by_id[T4]
        scores = json.loads(wait_until(lambda: h.source.nodes[NODE].get(keys.NODE_NVIDIA_SCORE)))
        assert {s["uuid"]: s["score"] for s in scores}[A100] == {A100_B: 120, T4: 10}


def test_allocate_creates_the_reserved_instances_and_records_them() -> None:
    reservations = [reservation(A100, "1g.5gb", 6, 1, device=0), reservation(A100, "2g.10gb", 0, 2, device=1)]
    pod = reserved_pod("p", reservations, allocated=f"{A100},NVIDIA,4864,15:{A100},NVIDIA,9984,29:;")
    with running_plugin(config=mig_config(), gpus=MIXED, pods=[pod], lock="t,default,p") as h, \
            h.kubelet.client(h.endpoint) as stub:
        response = allocate(stub, [f"{A100}-0", f"{A100}-1"]).container_responses[0]
        instances = {i.placement.start: i for i in h.backend.gpu_instances(A100)}
        assert sorted(instances) == [0, 6]
        assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": f"{instances[6].mig_uuid},{instances[0].mig_uuid}"}
        assert list(response.mounts) == []  # no libvgpu: MIG isolates in hardware
        annotations = h.annotations("p")
        recorded = decode_mig_allocations(annotations[keys.MIG_ALLOCATIONS])
        assert [(r.mig_uuid, r.gpu_instance_id, r.compute_instance_id) for r in recorded] == [
            (instances[6].mig_uuid, instances[6].gpu_instance_id, 0),
            (instances[0].mig_uuid, instances[0].gpu_instance_id, 0)]
        assert annotations[keys.BIND_PHASE] == "success"
        # The pod goes: the cleanup loop destroys its instances.
        with h.source._lock:
            del h.source.pods[("default", "p")]
        wait_until(lambda: h.backend.gpu_instances(A100) == [], timeout=10, what="cleanup")


def test_allocate_fails_closed_on_a_taken_placement() -> None:
    gpus = {"devices": [a100(A100, migMode="enabled")]}
    pod = reserved_pod("p", [reservation(A100, "2g.10gb", 2, 2)])
    with running_plugin(config=mig_config(), gpus=gpus, pods=[pod], lock="t,default,p") as h, \
            h.kubelet.client(h.endpoint) as stub:
        h.backend.create_gpu_instance(A100, GI_PROFILE_1_SLICE, MigPlacement(3, 1))  # someone else's
        with pytest.raises(grpc.RpcError) as error:
            allocate(stub, [f"{A100}-0"])
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "NVML_ERROR_INSUFFICIENT_RESOURCES" in error.value.details()
        annotations = h.annotations("p")
        assert annotations[keys.BIND_PHASE] == "failed"
        assert "migUUID" not in annotations[keys.MIG_ALLOCATIONS]
        assert [i.placement.start for i in h.backend.gpu_instances(A100)] == [3]


def test_allocate_rolls_back_a_container_half_made() -> None:
    gpus = {"devices": [a100(A100, migMode="enabled")]}
    pod = reserved_pod("p", [reservation(A100, "1g.5gb", 6, 1, device=0), reservation(A100, "1g.5gb", 5, 1, device=1)],
                       allocated=f"{A100},NVIDIA,4864,15:{A100},NVIDIA,4864,15:;")
    with running_plugin(config=mig_config(), gpus=gpus, pods=[pod], lock="t,default,p") as h, \
            h.kubelet.client(h.endpoint) as stub:
        original = h.backend.create_gpu_instance
        calls = []

        def second_fails(uuid: str, index: int, placement: MigPlacement) -> int:
            calls.append(placement)
            if len(calls) == 2:
                raise BackendError("NVML_ERROR_UNKNOWN", "injected")
            return original(uuid, index, placement)

        h.backend.create_gpu_instance = second_fails  # type: ignore[method-assign]
        with pytest.raises(grpc.RpcError) as error:
            allocate(stub, [f"{A100}-0", f"{A100}-1"])
        assert "NVML_ERROR_UNKNOWN" in error.value.details()
        assert h.backend.gpu_instances(A100) == []  # the first instance was destroyed again


def test_allocate_refuses_reservations_that_do_not_match() -> None:
    gpus = {"devices": [a100(A100, migMode="enabled")]}
    pod = reserved_pod("p", [reservation(A100, "1g.5gb", 6, 1)], allocated=f"{A100},NVIDIA,4864,15:;")
    pod["metadata"]["annotations"][keys.MIG_ALLOCATIONS] = "[]"
    with running_plugin(config=mig_config(), gpus=gpus, pods=[pod], lock="t,default,p") as h, \
            h.kubelet.client(h.endpoint) as stub:
        with pytest.raises(grpc.RpcError) as error:
            allocate(stub, [f"{A100}-0"])
        assert "0 MIG reservation(s)" in error.value.details()
        assert h.backend.gpu_instances(A100) == []


def test_runtime_identity_is_written_on_the_version_read() -> None:
    """A pod that changes between our read and our write is read again, never overwritten blind."""
    fake = backend(a100(migMode="enabled"))

    class Racing(InMemoryPodSource):
        raced = False

        def patch_pod_annotations_at(self, namespace: str, name: str, annotations: Any, resource_version: str) -> bool:
            if not self.raced:
                self.raced = True
                self.patch_pod_annotations(namespace, name, {"someone": "else"})
            return super().patch_pod_annotations_at(namespace, name, annotations, resource_version)

    pod = reserved_pod("p", [reservation(A100, "1g.5gb", 6, 1)])
    source = Racing([pod], nodes={NODE: {}})
    node = MigNode(fake, source, NODE, [A100])
    node.manager.profiles = manager(fake).profiles
    read = source.get_pod("default", "p")
    assert read is not None
    assert len(node.realize(read, 0, [A100])) == 1
    node.record(read)
    annotations = source.get_pod("default", "p")["metadata"]["annotations"]  # type: ignore[index]
    assert annotations["someone"] == "else"
    [recorded] = decode_mig_allocations(annotations[keys.MIG_ALLOCATIONS])
    assert recorded.realized and recorded.mig_uuid == fake.gpu_instances(A100)[0].mig_uuid


def test_asymmetric_links_raise_a_node_event() -> None:
    gpus = {"devices": [a100(A100, nvlink=[A100_B, A100_B]), a100(A100_B)]}
    with running_plugin(config=HamiConfig(nvidia=NvidiaConfig(deviceSplitCount=4)), gpus=gpus) as h:
        scores = json.loads(wait_until(lambda: h.source.nodes[NODE].get(keys.NODE_NVIDIA_SCORE)))
        assert scores == [{"uuid": A100, "score": {A100_B: 0}}, {"uuid": A100_B, "score": {A100: 0}}]
        [(node, reason, message)] = h.source.events
        assert (node, reason) == (NODE, "AsymmetricGPUP2PLink") and f"{A100}<->{A100_B}" in message


def test_mig_check_script_on_the_fake_nvml(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """scripts/mig-check.sh's steps, on the fake NVML: made, refused, destroyed; a GPU with MIG
    off, or with instances of someone else, is refused."""
    import yaml

    from hami.deviceplugin import mig_check

    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({"devices": [
        a100(A100, migMode="enabled"), a100(A100_B), a100("GPU-busy", migMode="enabled",
                                                          migInstances=[{"profile": "1g.5gb", "start": 0}])]}))
    assert mig_check.main(["--fake-devices", str(path), "--gpu", "0"]) == 0
    out = capsys.readouterr().out
    assert "1g.5gb at 6+1: MIG-" in out and "2g.10gb at 0+2" in out and "1g.5gb at 5+1" in out
    assert "refused: NVML_ERROR_INSUFFICIENT_RESOURCES" in out and out.rstrip().endswith("code path")
    assert mig_check.main(["--fake-devices", str(path), "--gpu", A100_B]) == 1
    assert "run again with --enable" in capsys.readouterr().out
    assert mig_check.main(["--fake-devices", str(path), "--gpu", A100_B, "--enable"]) == 0
    assert mig_check.main(["--fake-devices", str(path), "--gpu", "GPU-busy"]) == 1
    assert "FAILED: no GPU instance exists yet" in capsys.readouterr().out
    assert mig_check.main(["--fake-devices", str(path), "--gpu", "9"]) == 2
