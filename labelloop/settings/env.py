"""The environment's names for settings: the ``LABELLOOP_`` prefix, and the unprefixed names Label
Studio's ML backends read (``LABEL_STUDIO_URL``, ``BASIC_AUTH_USER``...), which a few fields also accept."""

from __future__ import annotations

from pydantic import AliasChoices

ENV_PREFIX = "LABELLOOP_"


def also_unprefixed(field: str) -> AliasChoices:
    """The names a field reads, first found wins: ``LABELLOOP_<FIELD>``, ``<FIELD>`` (the name Label
    Studio's ML backends use, e.g. ``LABEL_STUDIO_URL``) and ``field`` itself (keyword arguments).

    Args:
        field: the field's name, lower case (``label_studio_url``).

    Returns:
        The field's ``validation_alias``; ``service.settings_table`` shows its upper-case unprefixed
        name before the prefixed one.
    """
    upper = field.upper()
    return AliasChoices(f"{ENV_PREFIX}{upper}", upper, field)
