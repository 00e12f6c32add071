"""``pose``: RectangleLabels boxes with KeyPointLabels keypoints (``cls cx cy w h`` then ``x y v``
per keypoint in the label config's order, ``kpt_shape [K, 3]``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region
from labelloop.task_types.base import LabelLine, Lines, TaskType
from labelloop.task_types.geometry import as_array
from labelloop.task_types.outputs import Instances, ModelOutputs, RegionsOf
from labelloop.task_types.pose_lines import PoseLines

# Predicted keypoints below this confidence are left out of predictions.
MIN_KEYPOINT_CONF = 0.5


class Pose(TaskType):
    name = "pose"
    trained_alone = False
    control_tags = ("RectangleLabels", "KeyPointLabels")
    metrics_attr = "pose"

    def data_yaml_extra(self) -> dict[str, object]:
        return {"kpt_shape": [len(self.spec.keypoint_labels), 3]}

    def annotation_to_lines(
        self, result: Sequence[Region], class_ids: Mapping[str, int], width: int, height: int
    ) -> Lines:
        """See ``labelloop.task_types.pose_lines.PoseLines``."""
        return PoseLines(self.spec, class_ids, width, height).lines(result)

    def line_to_regions(self, line: LabelLine, width: int, height: int) -> list[Region]:
        if len(line.nums) < 4:
            raise ValueError(f"a pose line needs cx cy w h: {line.text!r}")
        box = self.make.yolo_box(line.nums, line.label, width, height)
        K = len(self.spec.keypoint_labels)
        rest = line.nums[4:]
        if K == 0 or len(rest) not in (2 * K, 3 * K):
            raise ValueError(f"a pose line for {K} keypoints needs {5 + 2 * K} or {5 + 3 * K} fields: {line.text!r}")
        regions = [box]
        for k, kp in enumerate(rest.reshape(K, -1)):
            visible = kp[2] > 0 if len(kp) == 3 else bool(kp[0] or kp[1])
            if visible:
                regions.append(self.make.keypoint(kp[0], kp[1], k, box["id"], width, height, None))
        return regions

    def instance_regions(self, found: Instances) -> RegionsOf:
        """Each instance's box (from ``boxes_xyxy``; none under ``MIN_BOX_PX``), then its keypoints
        in the image with ``keypoints_conf`` >= ``MIN_KEYPOINT_CONF`` (without confidences: every
        keypoint but YOLO's missing ``(0, 0)``), parented to the box."""
        W, H, n = found.width, found.height, len(found)
        if not self.spec.keypoint_from_name:
            raise ValueError("a pose TrainSpec needs keypoint_from_name")
        if found.outputs.get("boxes_xyxy") is None:
            raise ValueError("pose predictions need boxes_xyxy")
        xyxy = found.rows(found.outputs["boxes_xyxy"], "boxes", (4,))
        keypoints_xy, keypoints_conf = found.outputs.get("keypoints_xy"), found.outputs.get("keypoints_conf")
        kxy: npt.NDArray[np.float64] = np.zeros((n, 0, 2))
        kconf = None
        if keypoints_xy is not None:
            kxy = as_array(keypoints_xy)
            kxy = kxy.reshape(len(kxy), -1, 2) if kxy.size else kxy.reshape(0, 0, 2)
            if len(kxy) != n:
                raise ValueError(f"{len(kxy)} keypoint sets for {n} classes")
            kconf = None if keypoints_conf is None else as_array(keypoints_conf).reshape(n, -1)
        K = min(kxy.shape[1], len(self.spec.keypoint_labels))

        def regions(i: int, label: str) -> list[Region]:
            box = self.make.box(xyxy[i], label, W, H, found.score(i))
            if box is None:
                return []
            out = [box]
            for k in range(K):
                x, y = float(kxy[i, k, 0]), float(kxy[i, k, 1])
                c = None if kconf is None else float(kconf[i, k])
                if (c is not None and c < MIN_KEYPOINT_CONF) or (c is None and x == 0 and y == 0):
                    continue
                if not (0 <= x <= W and 0 <= y <= H):
                    continue
                out.append(self.make.keypoint(x / W, y / H, k, box["id"], W, H, c))
            return out

        return regions

    def outputs(self, res: Any) -> ModelOutputs | None:
        outputs = super().outputs(res)
        if outputs is not None and getattr(res, "keypoints", None) is not None:
            outputs["keypoints_xy"], outputs["keypoints_conf"] = res.keypoints.xy, res.keypoints.conf
        return outputs
