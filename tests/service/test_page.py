"""The project page (GET /projects/{id}) and the alertable gauges in /metrics, against real Redis,
a real registry and, for the rendering, a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image
from starlette.testclient import TestClient

from labelloop import keys
from labelloop.dev.stack import Stack, free_port
from labelloop.dev.synthetic import LABELS
from labelloop.quality.mistakes_report import write_report
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.app import create_app
from tests.factories import make_settings, publish_version

HOSTILE = '<img src=x onerror="alert(1)">'


def _manifest(map50: float, annotations: int, **extra: Any) -> dict[str, Any]:
    """``publish_version``'s arguments for a version trained on ``annotations`` annotations."""
    return {
        "metrics": {"map50": map50, "map50_95": map50 / 2, "precision": 0.5, "recall": 0.5},
        "annotations": {str(i): "2026-01-01T00:00:00Z" for i in range(annotations)},
        "dataset_size": {"train": annotations, "val": 2},
        **extra,
    }


def _publish_four(models_dir: Path, project_id: int = 3) -> Registry:
    """v1, v2 (promoted), v3 (rejected) and v4 (served, with per-class metrics of a hostile class name and a
    display threshold)."""
    registry = Registry(models_dir)
    publish_version(registry, project_id, **_manifest(0.2, 10))
    publish_version(registry, project_id, **_manifest(0.4, 20))
    publish_version(registry, project_id, promote=False, **_manifest(0.1, 30))
    classes = {HOSTILE: {"ap50": 0.75, "map50_95": 0.4, "precision": 0.6, "recall": 0.7}}
    show = {"value": 0.31, "prior": 0.25, "edits_per_image": 1.2, "edits_per_image_at_prior": 1.9}
    publish_version(registry, project_id, **_manifest(0.6, 40, class_metrics=classes, show_conf=show))
    return registry


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, redis_url=redis_url, basic_auth_user="ls", basic_auth_pass="pw")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _circles(html: str, series: str) -> list[str]:
    return re.findall(rf'<circle class="point" data-series="{series}" data-version="([^"]+)"', html)


def test_page_needs_the_project_routes_credentials(client: TestClient) -> None:
    """Without Basic auth the page is a 401 that asks the browser for it; a bad project id is a 400."""
    resp = client.get("/projects/3")
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Basic")
    assert client.get("/projects/abc", auth=("ls", "pw")).status_code == 400


def test_page_shows_curve_lineage_classes_and_progress(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """The page has one point per version and series, the served lineage and display threshold, escaped per-class rows,
    the running training's epoch and losses, pre-annotation progress and the promote/rollback calls."""
    _publish_four(settings.models_dir)
    r = redis.Redis.from_url(settings.redis_url)
    progress = {"run_id": "r", "stage": "training", "epoch": 3, "epochs": 7, "losses": {"train/box_loss": 1.25}}
    r.set(keys.progress(3), json.dumps(progress))
    r.set(keys.preannotation(3), json.dumps({"version": "v4", "done": 5, "total": 12}))
    try:
        resp = client.get("/projects/3", auth=("ls", "pw"))
    finally:
        r.delete(keys.progress(3), keys.preannotation(3))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    policy = resp.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src" not in policy
    html = resp.text
    assert _circles(html, "map50") == _circles(html, "map50_95") == ["v1", "v2", "v3", "v4"]
    assert 'data-version="v3" data-status="rejected"' in html
    assert '<strong id="served">v4</strong>' in html
    assert "its display threshold 0.310 (1.200 edits per validation image, 1.900 at 0.250)" in html
    assert "<code>v4</code> &larr; <code>v2</code> &larr; <code>v1</code>" in html
    assert HOSTILE not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "0.750" in html and "0.600" in html and "0.700" in html
    assert "epoch 3 of 7" in html and "train/box_loss 1.250" in html
    assert "Pre-annotating with v4: 5 of 12 tasks" in html
    assert "/projects/3/rollback" in html and "now it serves v2" in html
    assert "curl -u USER:PASS -X POST http://testserver/projects/3/rollback" in html
    # Nothing but the SVG namespace and the documented calls names another address, and no script runs.
    assert "<script" not in html and "http" not in html.replace("http://testserver/", "").replace(
        "http://www.w3.org/2000/svg", ""
    )


def test_page_of_a_project_without_versions(client: TestClient) -> None:
    """A project with no version yet gets a page saying so, with an empty chart."""
    resp = client.get("/projects/42", auth=("ls", "pw"))
    assert resp.status_code == 200
    assert "No model version is served yet" in resp.text and "no model version with metrics yet" in resp.text
    assert not _circles(resp.text, "map50")


def _gauge(text: str, name: str, project_id: int) -> float | None:
    m = re.search(rf'^{name}{{project_id="{project_id}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_has_served_map50_and_waiting_tasks(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """/metrics has the served version's mAP50 per project and the tasks its pre-annotation has
    still to do (total - done), 0 when none runs; a rollback changes the mAP50 gauge."""
    registry = _publish_four(settings.models_dir)
    r = redis.Redis.from_url(settings.redis_url)
    r.set(keys.preannotation(3), json.dumps({"version": "v4", "done": 5, "total": 12}))
    try:
        text = client.get("/metrics").text
    finally:
        r.delete(keys.preannotation(3))
    assert _gauge(text, "labelloop_served_map50", 3) == 0.6
    assert _gauge(text, "labelloop_preannotation_waiting_tasks", 3) == 7
    registry.rollback(3)
    text = client.get("/metrics").text
    assert _gauge(text, "labelloop_served_map50", 3) == 0.4
    assert _gauge(text, "labelloop_preannotation_waiting_tasks", 3) == 0


@pytest.mark.slow
def test_page_with_a_really_trained_version(trained: dict, settings: Settings, client: TestClient) -> None:
    """A real training records per-class AP50, precision and recall by class name, and the page shows them."""
    result = trained["result"]
    assert result["class_metrics"] and set(result["class_metrics"]) <= set(LABELS)
    for values in result["class_metrics"].values():
        assert set(values) == {"ap50", "map50_95", "precision", "recall"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    publish_version(
        Registry(settings.models_dir),
        9,
        result["best"],
        metrics=result["metrics"],
        class_metrics=result["class_metrics"],
    )
    html = client.get("/projects/9", auth=("ls", "pw")).text
    for name, values in result["class_metrics"].items():
        assert f"<td>{name}</td>" in html and f"{values['ap50']:.3f}" in html
    assert _circles(html, "map50") == ["v1"]


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh installs it: apt-get install chromium)")
    return binary


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_chromium_renders_the_learning_curve(redis_url: str, tmp_path: Path) -> None:
    """A headless Chromium loading the page from a running receiver gets one point per version and
    series in the DOM, and the screenshot shows them drawn inside the chart's plot area."""
    binary = _chromium()
    _publish_four(tmp_path / "models")
    env = {
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_MODELS_DIR": str(tmp_path / "models"),
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
    }
    stack = Stack(tmp_path / "stack", env)
    try:
        url = stack.start_receiver(free_port()) + "/projects/3"
        dom = _run_chromium(binary, tmp_path / "profile", "--dump-dom", url).stdout
        shot = tmp_path / "page.png"
        done = _run_chromium(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,1600", url)
    finally:
        stack.stop_all()
    assert _circles(dom, "map50") == _circles(dom, "map50_95") == ["v1", "v2", "v3", "v4"], dom[-2000:]
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    pixels = image.load()
    assert pixels is not None
    # The plot area is the one large block of its fill (#fafafa; text edges have a few such pixels).
    fill = (250, 250, 250)
    rows = [y for y in range(image.height) if sum(pixels[x, y] == fill for x in range(image.width)) > 300]
    assert rows, "the chart's plot area is not in the screenshot"
    cols = [x for x in range(image.width) if sum(pixels[x, y] == fill for y in rows) > 150]
    x0, x1, y0, y1 = min(cols), max(cols), min(rows), max(rows)
    assert 500 < x1 - x0 < 640 and 200 < y1 - y0 < 320, (x0, y0, x1, y1)
    red = sum(1 for y in range(y0, y1 + 1) for x in range(x0, x1 + 1) if pixels[x, y] == (0xD6, 0x27, 0x28))
    # The legend's swatch is 12x12; three filled points, a ring, a cross and the line add far more.
    assert red > 144 + 3 * 25, red


def test_page_buttons_promote_and_roll_back_from_the_same_origin_only(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """The page's forms promote and roll back (303 back to the page); a form from another origin,
    or without an Origin header, and any POST a browser marks cross-site are a 403 and serve
    nothing new (a browser sends Basic credentials with any site's request)."""
    registry = _publish_four(settings.models_dir)
    html = client.get("/projects/3", auth=("ls", "pw")).text
    assert 'action="/projects/3/promote"' in html and 'name="version" value="v1"' in html
    assert 'action="/projects/3/rollback"' in html
    form = {"content-type": "application/x-www-form-urlencoded"}
    for headers in (
        {},
        {"origin": "http://evil.example"},
        {"origin": "http://testserver", "sec-fetch-site": "cross-site"},
    ):
        refused = client.post(
            "/projects/3/promote", content="version=v1", headers={**form, **headers}, auth=("ls", "pw")
        )
        assert refused.status_code == 403 and "Origin" in refused.json()["error"]
        refused = client.post("/projects/3/rollback", content="", headers={**form, **headers}, auth=("ls", "pw"))
        assert refused.status_code == 403
    assert registry.current_name(3) == "v4"
    same = {**form, "origin": "http://testserver", "sec-fetch-site": "same-origin"}
    resp = client.post(
        "/projects/3/promote", content="version=v1", headers=same, auth=("ls", "pw"), follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/projects/3"
    assert registry.current_name(3) == "v1"
    resp = client.post("/projects/3/rollback", content="", headers=same, auth=("ls", "pw"), follow_redirects=False)
    assert resp.status_code == 303 and registry.current_name(3) == "v4"
    assert client.post("/projects/3/promote", content="version=v1", headers=same).status_code == 401
    # A bare POST another site makes a signed-in browser send (no form body) is refused too.
    cross = {"origin": "http://evil.example", "content-type": "text/plain"}
    assert client.post("/projects/3/rollback", headers=cross, auth=("ls", "pw")).status_code == 403
    assert (
        client.post("/projects/3/rollback", headers={"sec-fetch-site": "cross-site"}, auth=("ls", "pw")).status_code
        == 403
    )
    assert registry.current_name(3) == "v4"


def test_page_lists_label_mistakes_worst_first_with_regions_drawn(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """The last label-mistakes report shows worst first, each task with its judging version and that version's
    mAP50, its suspected issues listed and its annotated boxes and suspected regions drawn as inline SVG (no
    script, labels escaped); a project that is not detection says why."""
    _publish_four(settings.models_dir)
    region = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0}
    tasks = [
        {
            "task": 11,
            "annotation": 5,
            "version": "v2",
            "score": 0.05,
            "issues": [
                {"kind": "wrong class", "label": HOSTILE, "score": 0.01, "region": region, "predicted": "square"},
                {"kind": "missed object", "label": "disc", "score": 0.2, "region": region, "predicted": None},
            ],
            "boxes": [{**region, "label": HOSTILE}],
        },
        {
            "task": 12,
            "annotation": 6,
            "version": "v2",
            "score": 0.9,
            "issues": [],
            "boxes": [{**region, "label": "disc"}],
        },
    ]
    report = {"project_id": 3, "at": "2026-12-06T14:00:00+00:00", "supported": True, "unscored": 4, "tasks": tasks}
    write_report(Registry(settings.models_dir), 3, report)
    html = client.get("/projects/3", auth=("ls", "pw")).text
    section = html[html.index('<div id="mistakes">') :]
    assert "2 annotated tasks scored on 2026-12-06T14:00:00+00:00, 4 not scored" in section
    assert section.index("<td>11</td>") < section.index("<td>12</td>")
    assert section.count("<td>v2 (mAP50 0.400)</td>") == 2  # the judging version's own mAP50 beside it
    assert "wrong class: &lt;img src=x" in section and "(model: square)" in section and "missed object: disc" in section
    assert section.count('<rect class="issue"') == 2 and section.count("<svg") == 2
    assert 'stroke-dasharray="4 2" x="16.0" y="24.0" width="48.0" height="48.0"/>' in section  # percent of 160x120
    assert HOSTILE not in html and "<script" not in html

    write_report(
        Registry(settings.models_dir), 3, {"supported": False, "reason": "this project trains classify", "tasks": []}
    )
    assert '<p id="mistakes">this project trains classify</p>' in client.get("/projects/3", auth=("ls", "pw")).text
