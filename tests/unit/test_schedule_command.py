"""`hami schedule` end to end through the real entry point (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "snapshot.yaml"


def hami(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hami", *args], capture_output=True, text=True, timeout=120)


def test_example_snapshot_json_shape_and_answers() -> None:
    result = hami("schedule", "--snapshot", str(EXAMPLE), "-o", "json")
    assert result.returncode == 0, result.stderr
    decisions = {d["pod"]: d for d in json.loads(result.stdout)["decisions"]}
    assert list(decisions) == ["research/notebook", "research/trainer", "research/small-batch", "research/too-big"]
    notebook = decisions["research/notebook"]
    # Binpack nodes: node-a already holds a pod; spread GPUs: the idle GPU-a1.
    assert notebook["node"] == "node-a"
    assert notebook["containers"] == [
        [{"uuid": "GPU-a1", "type": "NVIDIA-A100-SXM4-80GB", "memory": 8000, "cores": 20}]
    ]
    trainer = decisions["research/trainer"]
    assert trainer["node"] == "node-a"
    assert sorted(d["memory"] for d in trainer["containers"][0]) == [40960, 40960]
    assert trainer["reasons"]["node-b"] == "2/2 CardTypeMismatch"
    small = decisions["research/small-batch"]
    assert [len(c) for c in small["containers"]] == [1, 1, 0]  # init, job, sidecar
    too_big = decisions["research/too-big"]
    assert too_big["node"] is None and too_big["containers"] == []
    assert too_big["reasons"] == {
        "cpu-only": "node unregistered",
        "node-a": "2/2 NodeInsufficientDevice",
        "node-b": "2/2 NodeInsufficientDevice",
    }


def test_policies_from_flags_change_the_answer() -> None:
    result = hami("schedule", "--snapshot", str(EXAMPLE), "--node-policy", "spread", "-o", "json")
    decisions = {d["pod"]: d for d in json.loads(result.stdout)["decisions"]}
    assert decisions["research/notebook"]["node"] == "node-b"


def test_table_output() -> None:
    result = hami("schedule", "--snapshot", str(EXAMPLE), "-o", "table")
    assert result.returncode == 0
    assert "research/too-big" in result.stdout and "unschedulable" in result.stdout
    assert "node-b: 2/2 NodeInsufficientDevice" in result.stdout


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "snap.yaml"
    path.write_text(text)
    return str(path)


NODE = """apiVersion: v1
kind: Node
metadata:
  name: n1
  annotations:
    hami.io/node-nvidia-register: '[{"id":"GPU-1","count":10,"devmem":1000,"devcore":100,"type":"T4","health":true}]'
"""


def pod_with(limits: str) -> str:
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: p}}
spec:
  containers:
  - name: c
    resources:
      limits: {limits}
"""


@pytest.mark.parametrize(
    "content, message",
    [
        ("just: [unclosed", "not valid YAML"),
        ("- 1\n- 2\n", "not a Kubernetes object"),
        ("kind: List\nitems: 3\n", "without an 'items' list"),
        ("kind: Pod\nmetadata: {}\n", "no metadata.name"),
        ("", "holds no Kubernetes objects"),
        (NODE + pod_with("{nvidia.com/gpu: 1, nvidia.com/gpumem: -5}"), "is negative"),
        (NODE + pod_with("{nvidia.com/gpu: 1, nvidia.com/gpumem: lots}"), "not a number"),
        (NODE + pod_with("{nvidia.com/gpu: 1, nvidia.com/gpucores: 120}"), "over 100"),
        (NODE + pod_with("{nvidia.com/gpu: 1, nvidia.com/gpumem-percentage: 101}"), "over 100"),
        (NODE + pod_with("{nvidia.com/gpu: 1.5}"), "not a whole number"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, content: str, message: str) -> None:
    result = hami("schedule", "--snapshot", write(tmp_path, content), "-o", "json")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreadable_file(tmp_path: Path) -> None:
    result = hami("schedule", "--snapshot", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read snapshot" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_registration_skips_the_node_with_a_warning(tmp_path: Path) -> None:
    broken = NODE.replace("n1", "n0").replace('[{"id"', '[{"id":1, "x"')
    text = broken + "---\n" + NODE + pod_with("{nvidia.com/gpu: 1, nvidia.com/gpumem: 100}")
    result = hami("schedule", "--snapshot", write(tmp_path, text), "-o", "json")
    assert result.returncode == 0
    assert "node n0: malformed hami.io/node-nvidia-register" in result.stderr
    (decision,) = json.loads(result.stdout)["decisions"]
    assert decision["node"] == "n1" and decision["reasons"] == {"n0": "node unregistered"}


def test_config_file_sets_resource_names_and_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nvidia:\n  resourceCountName: example.com/vgpu\n  defaultMemory: 300\n"
        "scheduler:\n  gpuSchedulerPolicy: binpack\n"
    )
    text = NODE + pod_with("{example.com/vgpu: 1, nvidia.com/gpucores: 10}")
    result = hami("schedule", "--snapshot", write(tmp_path, text), "--config", str(config), "-o", "json")
    assert result.returncode == 0, result.stderr
    (decision,) = json.loads(result.stdout)["decisions"]
    assert decision["containers"] == [[{"uuid": "GPU-1", "type": "T4", "memory": 300, "cores": 10}]]
    config.write_text("nvidia:\n  defaultCores: 300\n")
    bad = hami("schedule", "--snapshot", write(tmp_path, text), "--config", str(config))
    assert bad.returncode == 2 and "defaultCores" in bad.stderr
