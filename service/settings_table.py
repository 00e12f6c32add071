"""README's configuration table, generated from ``labelloop.settings.Settings`` so it cannot drift
(``labelloop settings-table``; README keeps it between the ``settings-table`` markers)."""

from __future__ import annotations

from labelloop.settings import ENV_PREFIX, Settings


def settings_table() -> str:
    """The table as Markdown: one row per ``Settings`` field, in declaration order.

    Columns: the environment variable(s) (Label Studio's own names, e.g. ``LABEL_STUDIO_URL``,
    before ``LABELLOOP_<FIELD>``), the default (``(unset)`` for None), and the field's description.
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = f"`{ENV_PREFIX}{name.upper()}`"
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            extra = [c for c in alias.choices if isinstance(c, str) and c.isupper() and not c.startswith(ENV_PREFIX)]
            env = " or ".join([f"`{c}`" for c in extra] + [env])
        default = field.default
        shown = "(unset)" if default is None else ("`''`" if default == "" else f"`{default}`")
        rows.append(f"| {env} | {shown} | {field.description or ''} |")
    return "\n".join(rows)
