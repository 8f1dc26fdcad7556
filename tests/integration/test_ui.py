"""`hami ui` in headless Chromium against the real control plane.

A scene of fake GPU nodes and pods with known devices and decisions; two viewers with their own
ServiceAccount tokens (an operator who may list nodes and all pods, a team member who may list
the pods of one namespace). Each page is checked for its rows and numbers; why-pending and what-if
are checked against `hami schedule` on a snapshot of the same cluster. Screenshots go to
$HAMI_UI_SCREENSHOTS (docs/ui to refresh the ones in docs/ui.md), else to a temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from playwright import sync_api as playwright_api

from hami.ui.whynot import group_reasons
from tests.cluster import ControlPlane, free_port
from tests.cluster.pki import CertificateAuthority, cert_pem, key_pem
from tests.integration.conftest import control_plane  # noqa: F401 - the shared fixture
from tests.integration.prometheus import Prometheus
from tests.integration.ui_stack import (
    A100,
    A100_MIB,
    CHROMIUM,
    CHROMIUM_ARGS,
    DCU,
    T4,
    MonitorMetrics,
    Scene,
    UiProcess,
    device_pod,
    hami_schedule,
    https_get,
    insecure_context,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_TRACE = "tests/data/openb-sample/openb_pod_list_default.csv"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def scene(control_plane: ControlPlane) -> Iterator[Scene]:  # noqa: F811
    built = Scene(control_plane).build()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `hami simulate` report: two policies, one seed, the quick cluster."""
    out = tmp_path_factory.mktemp("simulate")
    # The trace sample in the repository, named relative to it: the page (and its screenshot) shows it.
    subprocess.run([sys.executable, "-m", "hami", "simulate", "--trace", SAMPLE_TRACE, "--seeds", "3",
                    "--policy", "hami-binpack", "--policy", "hami-spread", "--policy", "fgd-balance", "--jobs", "1",
                    "--out", str(out)], check=True, capture_output=True, timeout=300, cwd=REPO)
    return out / "report.json"


@pytest.fixture(scope="module")
def monitor(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the node monitors' metrics: what the A100s of a100-0 and the
    first T4 use now, and the containers of train-1 and infer-1."""
    metrics = MonitorMetrics()
    a0, a1, t4 = scene.node("a100-0"), scene.node("a100-1"), scene.node("t4-0")
    metrics.device(a0, scene.nodes[a0][0], 50000, 42)
    metrics.device(a0, scene.nodes[a0][1], 65000, 97)
    metrics.device(t4, scene.nodes[t4][0], 3000, 5)
    metrics.container(scene.team_a, "train-1", f"GPU-{a0}-0", 48000, 40)
    metrics.container(scene.team_b, "infer-1", f"GPU-{a1}-0", 30000, 12)
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), {"hami-monitor": f"127.0.0.1:{metrics.port}"})
    yield prometheus
    prometheus.stop()
    metrics.stop()


@pytest.fixture(scope="module")
def ui(control_plane: ControlPlane, scene: Scene, report: Path, monitor: Prometheus,  # noqa: F811
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProcess]:
    process = UiProcess(control_plane, tmp_path_factory.mktemp("ui"),
                        ["--report", str(report), "--prometheus", monitor.url, "--prometheus-interval", "1"]).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run does)"
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def login(browser: Any, ui: UiProcess, token: str) -> Any:
    """A browser page logged in through the login form, at laptop width."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(ui.url + "/")
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(ui.url + "/")
    return page


@pytest.fixture(scope="module")
def operator(browser: Any, ui: UiProcess, scene: Scene) -> Any:
    return login(browser, ui, scene.admin_token)


@pytest.fixture(scope="module")
def member(browser: Any, ui: UiProcess, scene: Scene) -> Any:
    return login(browser, ui, scene.team_a_token)


SHOTS = Path(os.environ["HAMI_UI_SCREENSHOTS"]) if os.environ.get("HAMI_UI_SCREENSHOTS") else None


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    folder = SHOTS or tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    with Image.open(path) as shot:  # 64 colours: a page of text stays sharp, the file small
        shot.convert("RGB").quantize(colors=64).save(path, optimize=True)
    assert path.stat().st_size > 5000  # a rendered page, not a blank one


def wait_for_text(page: Any, url: str, selector: str, text: str, tries: int = 40) -> None:
    """Reload until the element shows `text` (live figures arrive within a few refreshes)."""
    for _ in range(tries):
        page.goto(url)
        if text in page.locator(selector).inner_text():
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"{selector} never showed {text!r}: {page.locator(selector).inner_text()!r}")


def cells(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def meter(page: Any, selector: str) -> tuple[int, int]:
    m = page.locator(selector + " meter").first
    return int(float(m.get_attribute("value"))), int(float(m.get_attribute("max")))


# ---- pages, as the operator sees them -----------------------------------------------------------


def test_overview_counts_devices_and_allocation_per_type(operator: Any, ui: UiProcess, scene: Scene,
                                                         tmp_path: Path) -> None:
    operator.goto(ui.url + "/")
    a100 = f"#types tr[data-type='{A100}']"
    assert operator.locator(a100 + " .devices").inner_text() == "4"
    # 60000 + 70000 + 40000 + 50000 MiB allocated of 4 × 81920.
    assert meter(operator, a100 + " .memory") == (220000, 4 * A100_MIB)
    assert meter(operator, a100 + " .cores") == (210, 400)
    assert meter(operator, a100 + " .slots") == (4, 40)
    t4 = f"#types tr[data-type='{T4}']"
    assert operator.locator(t4 + " .unhealthy").inner_text() == "1"
    assert operator.locator(t4 + " .idle").inner_text() == "3"
    assert meter(operator, t4 + " .memory") == (10000, 4 * 15360)
    # Fragmentation is computed (there are device pods): a number, not a dash.
    assert re.match(r"^\d+\.\d\d of \d+\.\d\d$", operator.locator(a100 + " .frag").inner_text())
    assert int(operator.locator("#count-unregistered").inner_text()) >= 1
    # Other vendors, side by side with no labels or configuration: the DCU pod's 8000 MiB of two
    # 16384 MiB DCUs; one of two Enflame GCUs, held whole (GCUs register 100 units, not MiB).
    dcu = f"#types tr[data-vendor='DCU'][data-type='{DCU}']"
    assert operator.locator(dcu + " .devices").inner_text() == "2"
    assert meter(operator, dcu + " .memory") == (8000, 2 * 16384)
    assert meter(operator, dcu + " .cores") == (30, 200)
    gcu = "#types tr[data-vendor='GCU']"
    assert (meter(operator, gcu + " .slots"), operator.locator(gcu + " .idle").inner_text()) == ((1, 2), "1")
    assert operator.locator(gcu + " .memory").inner_text() == "100 / 200"
    # In use, from Prometheus: 50000 + 65000 MiB on the A100s of a100-0; the trend chart is drawn.
    wait_for_text(operator, ui.url + "/", a100 + " .in-use", "112.3 GiB")
    assert meter(operator, a100 + " .in-use") == (115000, 4 * A100_MIB)
    operator.wait_for_selector("[data-chart='trend-chart'][data-drawn='true'] canvas")
    shoot(operator, "overview", tmp_path)


def test_nodes_page_shows_each_device_its_pods_and_state(operator: Any, ui: UiProcess, scene: Scene,
                                                         tmp_path: Path) -> None:
    operator.goto(ui.url + "/nodes?q=" + scene.prefix)
    assert operator.locator("#node-total").inner_text().startswith("5 nodes with devices")
    a0 = scene.node("a100-0")
    row = f"table[data-node='{a0}'] tr[data-uuid='GPU-{a0}-1']"
    assert "exclusive" in operator.locator(row).inner_text()
    assert f"{scene.team_a}/train-2: 70000 MiB, 100 %" in operator.locator(row + " .holders").inner_text()
    assert meter(operator, row + " .memory") == (70000, A100_MIB)
    assert meter(operator, row + " .in-use") == (65000, A100_MIB)
    assert "97 % busy" in operator.locator(row + " .in-use").inner_text()
    t4 = scene.node("t4-0")
    assert "unhealthy" in operator.locator(f"table[data-node='{t4}'] tr[data-uuid='GPU-{t4}-3']").inner_text()
    shoot(operator, "nodes", tmp_path)
    operator.goto(ui.url + f"/nodes/{a0}")
    assert operator.locator("#node-lock").inner_text() == "free"
    operator.goto(ui.url + f"/nodes/{scene.node('a100-1')}")
    assert operator.locator("#node-lock").inner_text() == scene.lock
    operator.goto(ui.url + f"/nodes/{a0}")
    assert sorted(cells(operator, "#pods tbody th")) == [f"{scene.team_a}/train-1", f"{scene.team_a}/train-2"]


def test_pods_page_requested_allocated_and_bind_phase(operator: Any, ui: UiProcess, scene: Scene,
                                                      tmp_path: Path) -> None:
    operator.goto(ui.url + f"/pods?namespace={scene.team_b}")
    rows = cells(operator, "#pods tbody th")
    assert rows == [f"{scene.team_b}/{n}" for n in ("dcu-run", "gcu-run", "infer-1", "infer-2", "t4-x", "two-t4")]
    dcu_run = f"#pods tr[data-pod='{scene.team_b}/dcu-run']"
    assert operator.locator(dcu_run + " .requested").inner_text() == "main: 1 × DCU, 8000 MiB, 30 %"
    dcu_allocated = operator.locator(dcu_run + " .allocated").inner_text()
    assert f"DCU-{scene.node('dcu-0')}-0 ({DCU}) 8000 MiB, 30 %" in dcu_allocated
    infer = f"#pods tr[data-pod='{scene.team_b}/infer-1']"
    assert operator.locator(infer + " .requested").inner_text() == "main: 1 × NVIDIA, 40000 MiB, 30 %"
    allocated = operator.locator(infer + " .allocated").inner_text()
    assert f"GPU-{scene.node('a100-1')}-0 ({A100}) 40000 MiB, 30 %" in allocated
    assert operator.locator(infer + " .bind").inner_text() == "success"
    assert operator.locator(infer + " .used").inner_text() == "30000 MiB, 12 % busy"
    assert operator.locator(f"#pods tr[data-pod='{scene.team_b}/infer-2'] .used").inner_text() == "–"
    # a100-1's node lock, held by infer-2's bind:
    assert operator.locator(f"#pods tr[data-pod='{scene.team_b}/infer-2'] .lock").inner_text() == "held by this pod"
    assert operator.locator(infer + " .lock").inner_text() == f"held by {scene.team_b}/infer-2"
    assert operator.locator(f"#pods tr[data-pod='{scene.team_b}/t4-x'] .lock").inner_text() == "–"
    assert operator.locator(f"#pods tr[data-pod='{scene.team_b}/two-t4'] .phase").inner_text() == "Pending (unbound)"
    operator.goto(ui.url + "/pods")
    shoot(operator, "pods", tmp_path)


def test_why_pending_gives_the_engines_reasons_and_changes_that_fit(operator: Any, ui: UiProcess, scene: Scene,
                                                                   tmp_path: Path) -> None:
    big = scene.pods[f"{scene.team_a}/big"]
    expected = hami_schedule(scene.snapshot(tmp_path / "snapshot.yaml", extra=[big]))["decisions"][0]
    assert expected["node"] is None
    operator.goto(ui.url + "/pending")
    answer = operator.locator(f"#pending tr[data-pod='{scene.team_a}/big'] .answer").inner_text()
    assert "CardInsufficientMemory" in answer
    fits = operator.locator(f"#pending tr[data-pod='{scene.team_b}/two-t4'] .answer").inner_text()
    assert f"fits now on {scene.node('t4-0')}" in fits

    operator.goto(ui.url + f"/pending/{scene.team_a}/big")
    assert operator.locator("#verdict").inner_text() == "It fits on no node."
    shown = {}
    for item in operator.locator("ul.groups > li").all():
        reason = item.locator(".reason").inner_text()
        shown[reason] = tuple(item.locator("details").text_content().strip().removeprefix("which").strip().split(", "))
    # The same groups as the engine's reasons in `hami schedule`, node for node.
    assert shown == {g.reason: g.nodes for g in group_reasons(expected["reasons"])}
    ours = {n for group in shown.values() for n in group if n.startswith(scene.prefix)}
    assert ours == {scene.node("a100-0"), scene.node("a100-1"), scene.node("t4-0"), scene.cpu_node,
                    *scene.other_nodes}
    assert scene.node("a100-1") in shown["CardInsufficientMemory"]
    assert scene.node("t4-0") in shown["CardNotHealth + CardTypeMismatch"]
    assert scene.cpu_node in shown["node unregistered"]
    suggestions = cells(operator, "#suggestions li")
    # 83 % of the ask is the largest that fits: 41500 MiB, on the A100 with 41920 MiB free.
    assert f"Ask less device memory — main: 41500 MiB instead of 50000 MiB → {scene.node('a100-1')}" in suggestions
    # The smallest pod whose end frees a node comes first.
    ends = [s for s in suggestions if "ends" in s]
    assert ends[0] == f"Node {scene.node('a100-1')} frees up enough when pod {scene.team_b}/infer-1 ends"
    shoot(operator, "why-pending", tmp_path)

    # Another vendor's pod: a DCU has 16384 MiB; 81 % of the 20000 MiB asked fits, on the DCU left free.
    big_dcu = scene.pods[f"{scene.team_a}/dcu-big"]
    expected = hami_schedule(scene.snapshot(tmp_path / "snapshot-dcu.yaml", extra=[big_dcu]))["decisions"][0]
    operator.goto(ui.url + f"/pending/{scene.team_a}/dcu-big")
    shown = {item.locator(".reason").inner_text(): tuple(
        item.locator("details").text_content().strip().removeprefix("which").strip().split(", "))
        for item in operator.locator("ul.groups > li").all()}
    assert shown == {g.reason: g.nodes for g in group_reasons(expected["reasons"])}
    assert scene.node("dcu-0") in shown["CardInsufficientMemory"]
    assert cells(operator, "#suggestions li")[0] == (
        f"Ask less device memory — main: 16200 MiB instead of 20000 MiB → {scene.node('dcu-0')}")


WHATIF = """
apiVersion: v1
kind: Pod
metadata: {name: whatif, namespace: %s}
spec:
  containers:
  - name: main
    image: busybox
    resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 20000, nvidia.com/gpucores: 30}}
"""


@pytest.mark.parametrize("memory", [20000, 90000])
def test_what_if_matches_hami_schedule(operator: Any, ui: UiProcess, scene: Scene, tmp_path: Path, memory: int) -> None:
    spec = (WHATIF % scene.team_a).replace("20000", str(memory))
    expected = hami_schedule(scene.snapshot(tmp_path / "snapshot.yaml", extra=[yaml.safe_load(spec)]))
    operator.goto(ui.url + "/whatif")
    operator.fill("#spec", spec)
    operator.click("form.whatif button[type=submit]")
    operator.wait_for_selector("#verdict")
    shown = json.loads(operator.locator("#hami-json").text_content())
    assert shown == expected  # node, devices per container, every node's reason, the score
    if expected["decisions"][0]["node"]:
        assert operator.locator("#verdict-node").inner_text() == expected["decisions"][0]["node"]
        operator.locator("details").first.evaluate("d => d.open = true")
        shoot(operator, "what-if", tmp_path)
    else:
        assert operator.locator("#verdict").inner_text() == "It fits on no node."


def test_what_if_refuses_bad_input_with_one_sentence(operator: Any, ui: UiProcess) -> None:
    operator.goto(ui.url + "/whatif")
    operator.fill("#spec", "kind: Pod\nspec: {containers: [{name: x, resources: {limits: {nvidia.com/gpu: -1}}}]}")
    operator.click("form.whatif button[type=submit]")
    assert "nvidia.com/gpu" in operator.locator("#error").inner_text()
    assert "Traceback" not in operator.content()


def test_simulator_opens_a_report_json(operator: Any, ui: UiProcess, report: Path, tmp_path: Path) -> None:
    data = json.loads(report.read_text())
    operator.goto(ui.url + "/simulator")
    operator.set_input_files("#report-file", str(report))  # ui.js reads it and sends the form
    operator.wait_for_selector("#fill")
    for policy, summary in data["policies"].items():
        row = cells(operator, f"#fill tr[data-policy='{policy}'] td")
        assert row[1].startswith(f"{100 * summary['allocation_ratio']['1.0']:.2f} %")
    operator.wait_for_selector("[data-chart='fill-chart'][data-drawn='true'] canvas")
    operator.locator("#report-title").scroll_into_view_if_needed()
    operator.evaluate("document.getElementById('report-title').scrollIntoView()")
    shoot(operator, "simulator", tmp_path)


# ---- what a team member sees: only what their RBAC allows -------------------------------------


def test_member_sees_only_their_namespace(member: Any, ui: UiProcess, scene: Scene) -> None:
    member.goto(ui.url + "/pods")
    shown = cells(member, "#pods tbody th")
    assert shown == [f"{scene.team_a}/{n}" for n in ("big", "dcu-big", "train-1", "train-2")]
    assert scene.team_b not in member.content()
    assert member.locator(f"#pods tr[data-pod='{scene.team_a}/train-1'] .used").inner_text() == "48000 MiB, 40 % busy"
    member.goto(ui.url + "/")
    assert member.locator("#types").count() == 0  # no device figures, live or allocated, without nodes access
    member.goto(ui.url + "/nodes")
    assert "may not list nodes" in member.locator(".error").inner_text()
    member.goto(ui.url + f"/pending/{scene.team_b}/two-t4")
    assert "may not list pods" in member.locator(".error").inner_text()
    member.goto(ui.url + f"/pending/{scene.team_a}/big")
    page = member.content()
    assert scene.prefix not in page  # no node names
    assert "a pod you may not see ends" in page  # team-b/infer-1, unnamed
    assert "details" not in member.locator("ul.groups").inner_html()  # counts, no node lists


# ---- security -----------------------------------------------------------------------------------


def test_no_identity_no_page_and_no_secret_in_pages(operator: Any, ui: UiProcess, scene: Scene) -> None:
    status, headers, _ = https_get(ui.url + "/pods")
    assert status == 303 and headers["location"].startswith("/login")
    status, _, body = https_get(ui.url + "/pods", {"Authorization": "Bearer not-a-token"})
    assert status == 303
    status, headers, body = https_get(ui.url + "/pods", {"Authorization": f"Bearer {scene.admin_token}"})
    assert status == 200 and f"{scene.team_b}/infer-1" in body
    assert scene.admin_token not in body
    assert "default-src 'self'" in headers["content-security-policy"]
    cookie = next(c for c in operator.context.cookies() if c["name"] == "hami_ui_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert scene.admin_token not in cookie["value"]
    # A form posted from another site is refused, even with valid credentials.
    status, _, _ = https_get(ui.url + "/whatif", {"Authorization": f"Bearer {scene.admin_token}",
                                             "Origin": "https://elsewhere.example"}, data=b"spec=x")
    assert status == 403


def test_behind_an_authenticating_proxy(control_plane: ControlPlane, scene: Scene,  # noqa: F811
                                        tmp_path: Path) -> None:
    """Only the proxy (a client certificate of its CA) may connect; the API server judges its user."""
    ca = CertificateAuthority.create("proxy-ca")
    key, cert = ca.issue("auth-proxy", client=True)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "proxy.crt").write_bytes(cert_pem(cert))
    (tmp_path / "proxy.key").write_bytes(key_pem(key))
    context = insecure_context()
    context.load_cert_chain(tmp_path / "proxy.crt", tmp_path / "proxy.key")
    proxied = UiProcess(control_plane, tmp_path, ["--proxy-client-ca", str(tmp_path / "ca.crt")],
                        client_context=context).start()
    try:
        status, _, body = https_get(proxied.url + "/pods", {"X-Remote-User": scene.team_a_user,
                                                       "X-Remote-Group": "system:serviceaccounts"}, context)
        assert status == 200
        assert f"{scene.team_a}/train-1" in body and scene.team_b not in body
        status, _, _ = https_get(proxied.url + "/pods", {}, context)
        assert status == 401
        with pytest.raises(OSError):  # without the proxy's certificate, no connection at all
            https_get(proxied.url + "/pods", {"X-Remote-User": scene.team_a_user})
    finally:
        proxied.stop()


def test_a_new_pod_appears_without_reload_of_the_ui(operator: Any, ui: UiProcess, scene: Scene) -> None:
    pod = device_pod("late", scene.team_a, 1000, 5)
    scene.cp.api("POST", f"/api/v1/namespaces/{scene.team_a}/pods", pod)
    try:
        for _ in range(50):
            operator.goto(ui.url + f"/pods?namespace={scene.team_a}")
            if f"{scene.team_a}/late" in cells(operator, "#pods tbody th"):
                break
            operator.wait_for_timeout(200)
        assert f"{scene.team_a}/late" in cells(operator, "#pods tbody th")
    finally:
        scene.cp.api("DELETE", f"/api/v1/namespaces/{scene.team_a}/pods/late")


def test_a_session_outlives_the_process_with_a_key_file(control_plane: ControlPlane, scene: Scene,  # noqa: F811
                                                        tmp_path: Path) -> None:
    key = tmp_path / "session.key"
    key.write_text(base64.b64encode(os.urandom(48)).decode())
    first = UiProcess(control_plane, tmp_path / "first", ["--session-key-file", str(key)]).start()
    try:
        form = urllib.parse.urlencode({"token": scene.admin_token, "next": "/nodes"}).encode()
        status, headers, _ = https_get(first.url + "/login", {"Origin": first.url}, data=form)
        assert status == 303, headers
        cookie = headers["set-cookie"].split(";", 1)[0]
    finally:
        first.stop()
    # Another process (a restart, or a second replica) with the same key takes the cookie ...
    second = UiProcess(control_plane, tmp_path / "second", ["--session-key-file", str(key)]).start()
    try:
        status, _, body = https_get(second.url + "/nodes", {"Cookie": cookie})
        assert status == 200 and f"GPU-{scene.node('a100-0')}-0" in body
    finally:
        second.stop()
    # ... one without it sends the viewer to the login page.
    third = UiProcess(control_plane, tmp_path / "third").start()
    try:
        status, headers, _ = https_get(third.url + "/nodes", {"Cookie": cookie})
        assert status == 303 and headers["location"].startswith("/login")
    finally:
        third.stop()


def test_prometheus_down_costs_a_note_not_the_page(control_plane: ControlPlane, scene: Scene,  # noqa: F811
                                                   tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    process = UiProcess(control_plane, tmp_path, ["--prometheus", closed, "--prometheus-interval", "1"]).start()
    try:
        status, _, body = https_get(process.url + "/nodes", {"Authorization": f"Bearer {scene.admin_token}"})
        assert status == 200 and f"GPU-{scene.node('a100-0')}-0" in body
        assert "Live usage is not shown: Prometheus at" in body
    finally:
        process.stop()

