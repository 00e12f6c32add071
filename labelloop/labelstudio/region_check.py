"""Regions Label Studio's bulk prediction import would refuse, dropped one by one.

Label Studio 1.23.2's bulk prediction import (``POST /api/projects/{id}/import/predictions``,
``data_import/api.py`` ``_create_legacy``) checks each prediction with label-studio-sdk's
``LabelInterface.validate_prediction`` and drops a prediction with any refused region whole: it
answers 201 with a ``created`` count short by one and says why only in its own log. A rotated box
along an image's diagonal is wider than the image (``width`` over 100, which the SDK's
``RectangleValue`` refuses), so one such region would cost a task its whole pre-annotation.

``RegionCheck`` runs the same SDK's ``validate_region`` on each region first, with the context the
import gives it, and keeps the regions it accepts, so what reaches Label Studio passes its check
(the SDK is the version Label Studio 1.23.2 ships, 2.1.2). Regions whose ``parentID`` names a
refused region (keypoints of a box) and relations touching one go with it.
"""

from __future__ import annotations

from typing import Any

RELATION = "relation"


class RegionCheck:
    """``check(result) -> (kept, errors)`` for one label config (parsed once).

    Args:
        label_config: the project's label config (XML).

    Raises:
        label-studio-sdk's parse errors for a label config it cannot read.
    """

    def __init__(self, label_config: str) -> None:
        from label_studio_sdk.label_interface.interface import LabelInterface

        self._interface = LabelInterface(label_config)

    def __call__(self, result: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """The regions of ``result`` Label Studio's import accepts, in order, and the SDK's messages
        for those it refuses (``"Region <index>: ..."``)."""
        errors: list[str] = []
        refused: set[str] = set()
        kept = []
        for i, region in enumerate(result):
            if region.get("type") == RELATION:
                kept.append(region)
                continue
            problems = self._interface.validate_region(  # type: ignore[no-untyped-call]
                region, return_errors=True, region_index=i, context={"result": result, "region": region}
            )
            if problems:
                errors.extend(problems)
                if region.get("id") is not None:
                    refused.add(str(region["id"]))
            else:
                kept.append(region)
        if not refused:
            return kept, errors

        def gone(region: dict[str, Any]) -> bool:
            named = [region.get("parentID"), region.get("from_id"), region.get("to_id")]
            return any(n is not None and str(n) in refused for n in named)

        return [r for r in kept if not gone(r)], errors
