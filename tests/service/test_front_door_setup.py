"""``/setup`` makes a project known only when Label Studio confirms it: Basic auth alone cannot
make up project ids (a real Label Studio 1.23.2 answers for the projects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from labelloop.dev.demo import LabelStudioAPI
from labelloop.events.ledger import PROJECTS_KEY
from service.app import create_app
from tests.conftest import fixture
from tests.factories import make_settings

BASIC = ("ls", "pw")


@pytest.mark.labelstudio
def test_setup_with_basic_auth_alone_cannot_make_up_project_ids(
    label_studio: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    """A /setup with valid Basic credentials for a project id Label Studio does not have leaves it
    unknown (no files, its webhooks stay 404); a project Label Studio confirms (labelloop's token, or the
    /setup access_token) becomes known and its webhooks are accepted."""
    url, token = label_studio
    real = LabelStudioAPI(url, token).create_project("front door setup")
    made_up = real + 100_000
    client = redis.Redis.from_url(redis_url)
    client.delete(PROJECTS_KEY)
    settings = make_settings(
        tmp_path,
        redis_url=redis_url,
        label_studio=(url, token),
        basic_auth_user=BASIC[0],
        basic_auth_pass=BASIC[1],
        first_picks=False,
    )
    setup = fixture("ml_setup_request.json")
    created = fixture("webhook_ANNOTATION_CREATED.json")
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        for access_token in (None, token):
            body = {**setup, "project": f"{made_up}.1795268180", "access_token": access_token}
            assert http.post("/setup", json=body, auth=BASIC).status_code == 200
        assert not client.sismember(PROJECTS_KEY, str(made_up))
        assert not (tmp_path / "models" / str(made_up)).exists(), "no files for a made-up project"
        resp = http.post("/webhook", json={**created, "project": {"id": made_up}}, auth=BASIC)
        assert resp.status_code == 404, resp.text
        body = {**setup, "project": f"{real}.1795268180", "access_token": token}
        assert http.post("/setup", json=body, auth=BASIC).status_code == 200
        assert client.sismember(PROJECTS_KEY, str(real))
        assert http.post("/webhook", json={**created, "project": {"id": real}}, auth=BASIC).status_code == 201
