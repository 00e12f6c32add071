"""Which ``VideoRectangle`` of a label config labelloop trains (``labelloop.task_types.labels`` asks here
first; the task type is ``labelloop.task_types.video``)."""

from __future__ import annotations

from typing import Any

from labelloop.errors import LabelConfigError
from labelloop.task_types.spec import TrainSpec
from labelloop.task_types.video import REGION_TYPE


def video_spec(interface: Any, control_tag: str | None = None) -> TrainSpec | None:
    """What to train from a label config's ``VideoRectangle`` on a ``Video`` object tag.

    Args:
        interface: label-studio-sdk's ``LabelInterface`` of the label config.
        control_tag: the project's ``control_tag`` extra param: another tag's name leaves the
            choice to the image task types (None returned).

    Returns:
        ``TrainSpec("detect", "videorectangle", <VideoRectangle name>, <Video name>, <value key>,
        <labels of the Labels tags on that Video, in config order>)``, or None when the config has
        no VideoRectangle on a Video (or ``control_tag`` names another tag).

    Raises:
        LabelConfigError: several VideoRectangle tags without ``control_tag``, or no ``Labels``
            with a label on its Video.
    """
    videos = {o.name: o for o in interface.objects if o.tag == "Video"}
    tracks = [c for c in interface.controls if c.tag == "VideoRectangle" and any(n in videos for n in c.to_name or ())]
    if control_tag is not None:
        tracks = [c for c in tracks if c.name == control_tag]
    if not tracks:
        return None
    if len(tracks) > 1:
        names = ", ".join(f"VideoRectangle '{c.name}'" for c in tracks)
        raise LabelConfigError(
            f"label config has several trainable control tags ({names}); "
            "set the extra param control_tag to the name of the one to train"
        )
    control = tracks[0]
    video = next(n for n in control.to_name if n in videos)
    labels: list[str] = []
    for c in interface.controls:
        if c.tag == "Labels" and video in (c.to_name or ()):
            labels += [v for v in c.labels or () if v not in labels]
    if not labels:
        raise LabelConfigError(f"VideoRectangle '{control.name}' has no Labels with a Label on Video '{video}'")
    value_key = (videos[video].value or "").lstrip("$")
    return TrainSpec("detect", REGION_TYPE, control.name, video, value_key, tuple(labels))


def video_attrs(label_config: str, to_name: str) -> dict[str, Any]:
    """The attributes of the ``Video`` tag ``to_name`` (for ``framerate``); empty when absent."""
    from label_studio_sdk.label_interface.interface import LabelInterface

    for o in LabelInterface(label_config).objects:
        if o.tag == "Video" and o.name == to_name:
            return dict(o.attr or {})
    return {}
