"""Per-project extra params: validation at /setup, storage, and precedence over the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from labelloop.errors import ParamsError
from labelloop.registry.params import EffectiveParams, ProjectParams, load, parse_extra_params, store
from service.app import create_app
from tests.conftest import fixture
from tests.factories import make_settings


@pytest.mark.parametrize("raw", [None, "", "null", {}])
def test_empty_extra_params_mean_defaults(raw: object) -> None:
    """No extra params (Label Studio sends null) leaves every setting to the environment."""
    assert parse_extra_params(raw) == ProjectParams()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"epochs": 0}, "epochs"),
        ({"imgsz": 100}, "multiple of 32"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"score_strategy": "random"}, "score_strategy"),
        ({"informative_tab": "maybe"}, "informative_tab"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ("[1, 2]", "JSON object"),
        ("{not json", "JSON object"),
        (42, "JSON object"),
    ],
)
def test_invalid_extra_params_are_422_with_reason(raw: object, reason: str) -> None:
    """Out-of-range values, unknown keys and non-objects are rejected with the reason."""
    with pytest.raises(ParamsError, match=reason) as err:
        parse_extra_params(raw)
    assert err.value.status_code == 422


def test_params_override_environment_defaults(tmp_path: Path) -> None:
    """Stored params win over the settings; unset keys keep the settings' values."""
    settings = make_settings(tmp_path, epochs=20, imgsz=640, train_every_n=10)
    store(tmp_path, 5, parse_extra_params('{"epochs": 3, "imgsz": 320}'))
    effective = load(tmp_path, 5).effective(settings)
    assert (effective["epochs"], effective["imgsz"], effective["train_every_n"]) == (3, 320, 10)
    assert not store(tmp_path, 5, parse_extra_params({"epochs": 3, "imgsz": 320}))


def test_effective_params_have_every_param_typed(tmp_path: Path) -> None:
    """``effective`` gives every extra param a key of ``EffectiveParams`` (a param added to one and
    not the other fails here), each value of its declared type: the setting's, None where no setting
    has the param."""
    effective = ProjectParams().effective(make_settings(tmp_path))
    assert set(effective) == set(ProjectParams.model_fields) == set(EffectiveParams.__annotations__)
    assert (effective["control_tag"], effective["obb"]) == (None, None)
    assert isinstance(effective["train_every_n"], int) and isinstance(effective["val_fraction"], float)
    assert isinstance(effective["preannotate"], bool) and isinstance(effective["base_model"], str)


def test_score_strategy_param_overrides_the_setting(tmp_path: Path) -> None:
    """The extra param score_strategy (and informative_tab) wins over LABELLOOP_SCORE_STRATEGY (and its setting)."""
    settings = make_settings(tmp_path, score_strategy="entropy", informative_tab=True)
    assert load(tmp_path, 6).effective(settings)["score_strategy"] == "entropy"
    store(tmp_path, 6, parse_extra_params({"score_strategy": "margin", "informative_tab": False}))
    effective = load(tmp_path, 6).effective(settings)
    assert (effective["score_strategy"], effective["informative_tab"]) == ("margin", False)


def test_setup_validates_and_stores_extra_params(redis_url: str, tmp_path: Path) -> None:
    """/setup stores valid extra params for the project and rejects invalid ones with 422, storing nothing."""
    settings = make_settings(tmp_path, redis_url=redis_url)
    with TestClient(create_app(settings)) as client:
        body = {**fixture("ml_setup_request.json"), "extra_params": {"epochs": 5, "train_every_n": 3}}
        assert client.post("/setup", json=body).status_code == 200
        assert load(settings.models_dir, 1) == ProjectParams(epochs=5, train_every_n=3)
        bad = client.post("/setup", json={**body, "project": "2.1", "extra_params": {"batch": -1}})
        assert bad.status_code == 422 and "batch" in bad.json()["error"]
        assert not (settings.models_dir / "2" / "params.json").exists()


AMBIGUOUS = (
    '<View><Image name="image" value="$image"/>'
    '<PolygonLabels name="outline" toName="image"><Label value="cat"/></PolygonLabels>'
    '<Choices name="quality" toName="image"><Choice value="good"/><Choice value="bad"/></Choices></View>'
)


def test_setup_chooses_the_control_tag_to_train(redis_url: str, tmp_path: Path) -> None:
    """An ambiguous label config is a 422 at /setup naming the tags and the control_tag extra param;
    with control_tag it is accepted; an unknown control_tag is a 422 too; every task type is accepted."""
    settings = make_settings(tmp_path, redis_url=redis_url)
    with TestClient(create_app(settings)) as client:
        body = {**fixture("ml_setup_request.json"), "schema": AMBIGUOUS}
        resp = client.post("/setup", json=body)
        assert resp.status_code == 422
        assert "outline" in resp.json()["error"] and "control_tag" in resp.json()["error"]
        ok = client.post("/setup", json={**body, "extra_params": {"control_tag": "quality"}})
        assert ok.status_code == 200
        assert load(settings.models_dir, 1).control_tag == "quality"
        bad = client.post("/setup", json={**body, "project": "2.1", "extra_params": {"control_tag": "nope"}})
        assert bad.status_code == 422 and "nope" in bad.json()["error"]
        for tag, child in [("BrushLabels", "Label"), ("PolygonLabels", "Label"), ("Choices", "Choice")]:
            config = (
                f'<View><Image name="image" value="$image"/><{tag} name="t" toName="image">'
                f'<{child} value="a"/></{tag}></View>'
            )
            assert client.post("/setup", json={**body, "schema": config}).status_code == 200


def test_effective_params_read_any_defaults_with_the_settings_attributes(tmp_path: Path) -> None:
    """``effective`` and ``preannotates`` read their defaults from any object with ``Settings``' attributes
    (``ParamDefaults``), not from ``Settings`` itself: a copy of the settings' values gives the same answer."""
    from dataclasses import make_dataclass

    from labelloop.registry.params import ParamDefaults, preannotates

    settings = make_settings(tmp_path, epochs=20, preannotate=True)
    names = [n for n in ProjectParams.model_fields if hasattr(settings, n)]
    defaults: ParamDefaults = make_dataclass("Defaults", names, frozen=True)(*(getattr(settings, n) for n in names))
    store(tmp_path, 7, parse_extra_params({"epochs": 3}))
    assert load(tmp_path, 7).effective(defaults) == load(tmp_path, 7).effective(settings)
    assert load(tmp_path, 7).effective(defaults)["epochs"] == 3
    assert preannotates(tmp_path, defaults, 7) is True
    store(tmp_path, 7, parse_extra_params({"preannotate": False}))
    assert preannotates(tmp_path, settings, 7) is False
