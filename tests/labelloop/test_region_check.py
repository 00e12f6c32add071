"""``labelloop.labelstudio.region_check``: the regions Label Studio 1.23.2's bulk prediction import
refuses (label-studio-sdk's own validation) are dropped one by one, with their children."""

from __future__ import annotations

from typing import Any

from label_studio_sdk.label_interface.interface import LabelInterface

from labelloop.dev.synthetic import LABEL_CONFIG, make_sample
from labelloop.labelstudio.region_check import RegionCheck


def _regions() -> list[dict[str, Any]]:
    return make_sample(3, 160, 120).ls_result()


def test_refused_regions_are_dropped_and_the_rest_passes_label_studios_check() -> None:
    """A rotated box wider than the image (width 120 %) and one 150 % high are refused with the
    SDK's message; the other regions stay in order, and the prediction left passes the check Label
    Studio's import runs, where the whole prediction failed it before."""
    good = _regions()
    wide = {**good[0], "id": "wide", "value": {**good[0]["value"], "width": 120.0, "rotation": 45.0}}
    tall = {**good[0], "id": "tall", "value": {**good[0]["value"], "height": 150.0}}
    result = [good[0], wide, *good[1:], tall]
    interface = LabelInterface(LABEL_CONFIG)
    assert interface.validate_prediction({"result": result, "score": 0.5}, return_errors=True)
    kept, errors = RegionCheck(LABEL_CONFIG)(result)
    assert kept == good
    assert len(errors) == 2 and errors[0].startswith("Region 1:") and "width" in errors[0]
    assert interface.validate_prediction({"result": kept, "score": 0.5}, return_errors=True) == []


def test_children_and_relations_of_a_refused_region_go_with_it() -> None:
    """A region whose ``parentID`` names a refused region, and a relation from or to one, are left
    out; a relation between kept regions stays; a result with nothing refused comes back whole."""
    good = _regions()
    bad = {**good[0], "id": "bad", "value": {**good[0]["value"], "height": 150.0}}
    child = {**good[0], "id": "child", "parentID": "bad"}
    to_bad = {"type": "relation", "from_id": good[0]["id"], "to_id": "bad", "direction": "right"}
    kept_relation = {"type": "relation", "from_id": good[0]["id"], "to_id": good[-1]["id"], "direction": "right"}
    check = RegionCheck(LABEL_CONFIG)
    kept, errors = check([*good, bad, child, to_bad, kept_relation])
    assert kept == [*good, kept_relation] and len(errors) == 1
    assert check(good) == (good, [])
