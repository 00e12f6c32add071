"""Pose annotations as YOLO pose label lines (https://docs.ultralytics.com/datasets/pose/):
``cls cx cy w h`` then ``x y v`` per keypoint in the label config's order (``v`` 2: visible;
a missing keypoint is ``0 0 0``), all normalised to [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from labelloop.ls_json import Region
from labelloop.task_types.geometry import yolo_numbers
from labelloop.task_types.regions import describe, first_label
from labelloop.task_types.spec import MIN_BOX_PX, TrainSpec, rectangle_to_yolo

#: A YOLO box ``(cx, cy, w, h)``, normalised.
Box = tuple[float, float, float, float]


@dataclass
class _Instance:
    """A kept box: its class id, YOLO box and keypoints by slot (normalised ``x, y`` or None)."""

    cls: int
    box: Box
    slots: list[tuple[float, float] | None]

    def contains(self, x: float, y: float) -> bool:
        cx, cy, w, h = self.box
        eps = 1e-9
        return cx - w / 2 - eps <= x <= cx + w / 2 + eps and cy - h / 2 - eps <= y <= cy + h / 2 + eps


@dataclass
class PoseLines:
    """The pose lines of one annotation: rectangles of ``spec.from_name`` are instances; each keypoint
    of ``spec.keypoint_from_name`` belongs to the rectangle its ``parentID`` names, else to the
    smallest rectangle containing it.

    Attributes:
        spec: a pose spec (``keypoint_from_name`` and ``keypoint_labels`` set).
        class_ids: label -> class id; a box whose label has none is dropped.
        width, height: the image size in pixels (for ``MIN_BOX_PX``).
    """

    spec: TrainSpec
    class_ids: Mapping[str, int]
    width: int
    height: int
    dropped: list[str] = field(default_factory=list, init=False)
    _boxes: dict[str, _Instance] = field(default_factory=dict, init=False)
    _dropped_boxes: set[str] = field(default_factory=set, init=False)

    def lines(self, result: Sequence[Region]) -> tuple[list[str], list[str]]:
        """``(lines, dropped)``: one line per kept box, and a reason per dropped region.

        Raises:
            ValueError: the spec has no ``keypoint_from_name`` or ``keypoint_labels``.
        """
        if not self.spec.keypoint_from_name or not self.spec.keypoint_labels:
            raise ValueError("a pose TrainSpec needs keypoint_from_name and keypoint_labels")
        for n, region in enumerate(result):
            if region.get("from_name") == self.spec.from_name:
                self._add_box(region, str(region.get("id", f"#{n}")))
        for region in result:
            if region.get("from_name") == self.spec.keypoint_from_name:
                self._add_keypoint(region)
        out = []
        for kept in self._boxes.values():
            kpts = " ".join("0 0 0" if p is None else f"{yolo_numbers(p)} 2" for p in kept.slots)
            out.append(f"{kept.cls} {yolo_numbers(kept.box)} {kpts}")
        return out, self.dropped

    def _add_box(self, region: Region, rid: str) -> None:
        kept, why = self._box(region)
        if kept is None:
            self.dropped.append(f"{describe(region)}: {why}")
            self._dropped_boxes.add(rid)
        else:
            self._boxes[rid] = kept

    def _box(self, region: Region) -> tuple[_Instance | None, str]:
        """The instance of a box region, or None and why it is dropped."""
        if region.get("type") != "rectanglelabels":
            return None, f"region type {region.get('type')!r} is not a pose box"
        label, reason = first_label(region, "rectanglelabels")
        if label is None or label not in self.class_ids:
            return None, reason or f"label {label!r} has no class id (not in the label config)"
        try:
            box = rectangle_to_yolo(region["value"], self.width, self.height)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return None, f"malformed value ({type(exc).__name__}: {exc})"
        if box is None:
            return None, f"degenerate box (under {MIN_BOX_PX:g} px after clamping)"
        return _Instance(int(self.class_ids[label]), box, [None] * len(self.spec.keypoint_labels)), ""

    def _add_keypoint(self, region: Region) -> None:
        where = describe(region)
        if region.get("type") != "keypointlabels":
            self.dropped.append(f"{where}: region type {region.get('type')!r} is not a keypoint")
            return
        label, reason = first_label(region, "keypointlabels")
        if label is None:
            self.dropped.append(f"{where}: {reason}")
            return
        if label not in self.spec.keypoint_labels:
            self.dropped.append(f"{where}: keypoint label {label!r} not in the label config")
            return
        try:
            x = float(region["value"]["x"]) / 100
            y = float(region["value"]["y"]) / 100
        except (KeyError, TypeError, ValueError) as exc:
            self.dropped.append(f"{where}: malformed value ({type(exc).__name__}: {exc})")
            return
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            self.dropped.append(f"{where}: keypoint outside the image")
            return
        owner = self._owner(region.get("parentID"), x, y)
        if owner is None:
            if region.get("parentID") is not None and str(region.get("parentID")) in self._dropped_boxes:
                self.dropped.append(f"{where}: its box {region.get('parentID')} was dropped")
            else:
                self.dropped.append(f"{where}: keypoint {label!r} is in no box")
            return
        slots = self._boxes[owner].slots
        slot = self.spec.keypoint_labels.index(label)
        if slots[slot] is not None:
            self.dropped.append(f"{where}: box {owner} already has keypoint {label!r}")
            return
        slots[slot] = (x, y)

    def _owner(self, parent: str | None, x: float, y: float) -> str | None:
        """The kept box a keypoint belongs to: its ``parentID`` when kept, none when that box was
        dropped, else the smallest kept box containing ``(x, y)``."""
        if parent is not None and str(parent) in self._boxes:
            return str(parent)
        if parent is not None and str(parent) in self._dropped_boxes:
            return None
        inside = [rid for rid, kept in self._boxes.items() if kept.contains(x, y)]
        return min(inside, key=lambda rid: self._boxes[rid].box[2] * self._boxes[rid].box[3]) if inside else None
