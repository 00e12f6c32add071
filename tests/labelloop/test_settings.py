"""``Settings`` from the environment: every field, whichever field group declares it, reads
``LABELLOOP_<FIELD>``; the Label Studio names read unprefixed too; validators run on what is read."""

from __future__ import annotations

import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pydantic
import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo

from labelloop.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

#: The names Label Studio's ML backends use, which labelloop reads without its prefix too (README).
LABEL_STUDIO_NAMES = {
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_api_key": "LABEL_STUDIO_API_KEY",
    "local_files_document_root": "LOCAL_FILES_DOCUMENT_ROOT",
    "label_studio_media_dir": "LABEL_STUDIO_MEDIA_DIR",
    "basic_auth_user": "BASIC_AUTH_USER",
    "basic_auth_pass": "BASIC_AUTH_PASS",
}
#: Strings only some values of which their validators accept: a valid non-default value each.
VALIDATED = {
    "label_studio_url": "http://label-studio.example:8080/",
    "video_tracker": "botsort.yaml",
    "promotion_metric": "recall",
    "allowed_hosts": "Labelloop.example, 10.0.0.5",
}


def _unprefixed(info: FieldInfo) -> list[str]:
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return [c for c in choices if isinstance(c, str) and c.isupper() and not c.startswith(ENV_PREFIX)]


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``LABELLOOP_*`` variable (conftest sets some) and no unprefixed Label Studio name."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in LABEL_STUDIO_NAMES.values():
            monkeypatch.delenv(name)


def _number(info: FieldInfo, kind: type[int] | type[float]) -> str:
    """A value inside the field's bounds (``ge``/``gt``/``le``/``lt``) other than its default."""
    lo: float | None = None
    hi: float | None = None
    lo_open = hi_open = False
    for bound in info.metadata:
        if isinstance(bound, Ge):
            lo = float(bound.ge)  # type: ignore[arg-type]
        elif isinstance(bound, Gt):
            lo, lo_open = float(bound.gt), True  # type: ignore[arg-type]
        elif isinstance(bound, Le):
            hi = float(bound.le)  # type: ignore[arg-type]
        elif isinstance(bound, Lt):
            hi, hi_open = float(bound.lt), True  # type: ignore[arg-type]
    default = info.default
    candidates = [default + 1, default - 1] if default is not None else []
    if lo is not None and hi is not None:
        candidates.append((lo + hi) / 2)
    candidates.append((lo or 0) + 1)
    for candidate in (kind(c) for c in candidates):
        above = lo is None or candidate > lo or (candidate == lo and not lo_open)
        below = hi is None or candidate < hi or (candidate == hi and not hi_open)
        if above and below and candidate != default:
            return str(candidate)
    raise AssertionError(f"no non-default value for {info}")


def _non_default(name: str, info: FieldInfo) -> str:
    """The text of a valid value of field ``name`` other than its default, as a variable holds it."""
    if name in VALIDATED:
        return VALIDATED[name]
    annotation = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if annotation is bool:
        return "false" if info.default is True else "true"
    if annotation in (int, float):
        return _number(info, annotation)
    if get_origin(annotation) is Literal:
        return str(next(a for a in get_args(annotation) if a != info.default))
    assert annotation in (str, Path, SecretStr), f"{name}: add a value for {annotation} to the test"
    return f"{info.default or 'x'}-set"


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_field_reads_its_labelloop_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LABELLOOP_<FIELD>`` set to a valid non-default value gives the field the value a keyword
    argument gives, and changes no other field."""
    _clean_environment(monkeypatch)
    default = Settings()
    raw = _non_default(name, Settings.model_fields[name])
    monkeypatch.setenv(f"{ENV_PREFIX}{name.upper()}", raw)
    read = Settings()
    expected = _plain(getattr(Settings.model_validate({name: raw}), name))
    assert _plain(getattr(read, name)) == expected != _plain(getattr(default, name))
    changed = {f for f in Settings.model_fields if _plain(getattr(read, f)) != _plain(getattr(default, f))}
    assert changed == {name}


def test_label_studio_names_are_read_unprefixed_and_the_prefixed_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly the fields named as Label Studio's ML backends name them read that name too
    (``LABEL_STUDIO_URL``...); with both set, ``LABELLOOP_<FIELD>`` wins."""
    unprefixed = {n: names for n, info in Settings.model_fields.items() if (names := _unprefixed(info))}
    assert unprefixed == {n: [v] for n, v in LABEL_STUDIO_NAMES.items()}
    for name, variable in LABEL_STUDIO_NAMES.items():
        _clean_environment(monkeypatch)
        raw = _non_default(name, Settings.model_fields[name])
        monkeypatch.setenv(variable, raw)
        expected = _plain(getattr(Settings.model_validate({name: raw}), name))
        assert _plain(getattr(Settings(), name)) == expected is not None, variable
        monkeypatch.setenv(f"{ENV_PREFIX}{name.upper()}", f"{raw}prefixed")
        assert _plain(getattr(Settings(), name)) == _plain(
            getattr(Settings.model_validate({name: f"{raw}prefixed"}), name)
        ), variable


def test_validators_run_on_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The field groups' validators clean or refuse what the environment holds: URL without its
    trailing slash, host list split and lower-cased, an unknown tracker refused."""
    _clean_environment(monkeypatch)
    monkeypatch.setenv("LABEL_STUDIO_URL", " http://ls.example:8080/ ")
    monkeypatch.setenv("LABELLOOP_ALLOWED_HOSTS", "A.example, ,b.example")
    settings = Settings()
    assert settings.label_studio_url == "http://ls.example:8080"
    assert settings.allowed_hosts == ["a.example", "b.example"]
    monkeypatch.setenv("LABELLOOP_VIDEO_TRACKER", "no-such-tracker.yaml")
    with pytest.raises(pydantic.ValidationError, match="LABELLOOP_VIDEO_TRACKER"):
        Settings()


def test_the_variables_read_are_the_ones_readme_documents() -> None:
    """README's configuration table names, row by row, the variables the tests above set: each
    field's unprefixed Label Studio name (if any) and ``LABELLOOP_<FIELD>``, in field order."""
    table = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", README.read_text(), re.S)
    assert table, "README lacks the settings-table markers"
    documented = [re.findall(r"`([A-Z_]+)`", row.split(" | ")[0]) for row in table.group(1).splitlines()[2:]]
    read = [
        ([LABEL_STUDIO_NAMES[n]] if n in LABEL_STUDIO_NAMES else []) + [f"{ENV_PREFIX}{n.upper()}"]
        for n in Settings.model_fields
    ]
    assert documented == read
