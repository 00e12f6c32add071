"""The project page, ``GET /projects/{id}``: plain HTML with the learning curve as inline SVG,
and the annotations the model disagrees with, each drawn as inline SVG (``labelloop.quality.mistakes``).

No JavaScript and nothing loaded from elsewhere: a browser, ``curl`` or a headless Chromium
reads the same page. ``project_view`` reads the registry (blocking: the route runs it in a
thread); ``render`` is a pure function of the view. Every value that comes from Label Studio
(class names), a manifest or Redis is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from labelloop.errors import RegistryError
from labelloop.events import project_webhook
from labelloop.manifest import Manifest
from labelloop.quality.mistakes_report import read_report
from labelloop.registry.curve import CurvePoint, curve_points, svg_learning_curve
from labelloop.registry.model_export import downloads
from labelloop.registry.store import Registry

MISTAKES_SHOWN = 20  # tasks listed on the page (the Data Manager tab lists them all)


@dataclass
class ProjectView:
    """What the page shows of one project.

    Attributes:
        project_id: the Label Studio project id.
        served: the served version's name, or None.
        served_manifest: its manifest (empty when it has none).
        lineage: the served version and its parents, newest first (``Manifest.parent``).
        history: changes of the served version, newest first (``Registry.history``).
        points: the learning curve, oldest version first.
        rollback_target: the version a rollback would serve, or None.
        training: the running training's progress record (``labelloop.jobs.progress``), or None.
        preannotation: the running pre-annotation's ``{"version", "done", "total"}``, or None.
        webhook: the last check of the project's webhook to labelloop (``labelloop.events.project_webhook``), or None.
        base_url: the receiver's URL as the browser reached it (for the documented calls).
        downloads: version -> the names of its downloadable files (``labelloop.registry.model_export.downloads``).
        mistakes: the last label-mistakes report (``labelloop.quality.mistakes_report``; ``{"tasks": []}`` when none).
    """

    project_id: int
    served: str | None
    served_manifest: Manifest
    lineage: list[str]
    history: list[dict[str, Any]]
    points: list[CurvePoint]
    rollback_target: str | None
    training: dict[str, Any] | None = None
    preannotation: dict[str, Any] | None = None
    webhook: project_webhook.Check | None = None
    base_url: str = "http://HOST:9090"
    downloads: dict[str, list[str]] = field(default_factory=dict)
    mistakes: dict[str, Any] | None = None


def project_view(registry: Registry, project_id: int) -> ProjectView:
    """Read a project's versions, statuses and history from the registry (blocking file reads)."""
    versions = registry.list_versions(project_id)
    served = registry.current_name(project_id)
    records = {v.name: _record(v.manifest) for v in versions}
    statuses = {v.name: _status(registry, project_id, v.name) for v in versions}
    lineage: list[str] = []
    name = served
    while name and name not in lineage:
        lineage.append(name)
        name = records[name].parent if name in records else None
    try:
        target: str | None = registry.rollback_target(project_id)
    except RegistryError:
        target = None
    return ProjectView(
        project_id=project_id,
        served=served,
        served_manifest=records.get(served or "", Manifest()),
        lineage=lineage,
        history=registry.history(project_id)[::-1],
        points=curve_points(
            ((v.name, records[v.name], statuses[v.name]) for v in versions),
            {
                e["version"]: int(e["annotations"])
                for e in registry.summaries(project_id)
                if isinstance(e.get("annotations"), int)
            },
        ),
        rollback_target=target,
        downloads={v.name: list(downloads(v)) for v in versions},
        mistakes=read_report(registry, project_id),
    )


def _status(registry: Registry, project_id: int, name: str) -> str:
    try:
        return registry.status(project_id, name)
    except RegistryError:  # its manifest was emptied by a crash
        return "unreadable"


def _record(manifest: dict[str, Any]) -> Manifest:
    """A manifest's typed record; one that does not validate reads as empty (the page still renders)."""
    try:
        return Manifest.model_validate(manifest)
    except ValueError:
        return Manifest()


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; the cells must already be escaped."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _served_section(view: ProjectView) -> str:
    if view.served is None:
        return "<p>No model version is served yet (Label Studio sees <code>untrained</code>).</p>"
    m = view.served_manifest
    metrics = ", ".join(f"{escape(k)} {_num(v)}" for k, v in sorted(m.metrics.items())) or "none recorded"
    lineage = " &larr; ".join(f"<code>{escape(n)}</code>" for n in view.lineage)
    show = m.show_conf
    shown = (
        f"its display threshold {_num(show.value)} ({_num(show.edits_per_image)} edits per validation image, "
        f"{_num(show.edits_per_image_at_prior)} at {_num(show.prior)})"
        if show is not None and show.value is not None
        else "no display threshold of its own"
    )
    return (
        f'<p>Serving <strong id="served">{escape(view.served)}</strong>, created {escape(m.created_at or "-")}; '
        f"metrics: {metrics}; {shown}.</p><p>Lineage (each version fine-tuned from the next): {lineage}</p>"
    )


def _class_section(m: Manifest) -> str:
    if not m.class_metrics:
        return "<p>No per-class metrics recorded for the served version.</p>"
    rows = []
    for name, cm in sorted(m.class_metrics.items()):
        ap50 = cm.get("ap50")
        width = round(100 * ap50) if isinstance(ap50, int | float) else 0
        bar = f'<span class="bar" style="width:{max(0, min(100, width))}px"></span>'
        rows.append([escape(name), f"{bar} {_num(ap50)}", _num(cm.get("precision")), _num(cm.get("recall"))])
    return _table(["class", "AP50", "precision", "recall"], rows)


def _running_section(view: ProjectView) -> str:
    parts = []
    t = view.training
    if t:
        raw = t.get("losses")
        losses: dict[str, Any] = raw if isinstance(raw, dict) else {}
        loss_text = ", ".join(f"{escape(str(k))} {_num(v)}" for k, v in sorted(losses.items())) or "-"
        parts.append(
            f'<p id="training">Training ({escape(str(t.get("stage", "running")))}): epoch '
            f"{escape(str(t.get('epoch', '-')))} of {escape(str(t.get('epochs', '-')))}; losses: {loss_text}</p>"
        )
    else:
        parts.append('<p id="training">No training is running.</p>')
    p = view.preannotation
    if p:
        parts.append(
            f'<p id="preannotation">Pre-annotating with {escape(str(p.get("version", "-")))}: '
            f"{escape(str(p.get('done', 0)))} of {escape(str(p.get('total', 0)))} tasks.</p>"
        )
    else:
        parts.append('<p id="preannotation">No pre-annotation is running.</p>')
    w = view.webhook
    warn = ' class="warn"' if w is not None and w.ok is False else ""
    parts.append(f'<p id="webhook"{warn}>Label Studio webhook: {escape(project_webhook.describe(w))}</p>')
    return "".join(parts)


def _versions_section(view: ProjectView) -> str:
    rows = [
        [
            escape(p.version) + (" *" if p.status == "serving" else ""),
            escape(p.status),
            str(p.annotations),
            _num(p.map50),
            _num(p.map50_95),
            "" if p.status == "serving" else _promote_form(view.project_id, p.version),
        ]
        for p in reversed(view.points)
    ]
    return _table(["version", "status", "annotations", "mAP50", "mAP50-95", ""], rows)


def _downloads_section(view: ProjectView) -> str:
    """Links to each version's weights and finished exports (with their model cards), newest first."""
    pid = view.project_id
    rows = [
        [
            escape(version),
            " ".join(
                f'<a href="/projects/{pid}/versions/{escape(version)}/files/{escape(name)}">{escape(name)}</a>'
                for name in names
            ),
        ]
        for version, names in sorted(view.downloads.items(), key=lambda item: -int(item[0][1:]))
    ]
    return (
        "<p>Other formats with their model card: <code>labelloop models export "
        f"{pid} VERSION --format onnx|torchscript|openvino</code> (then linked here).</p>"
        + _table(["version", "files"], rows)
    )


def _promote_form(project_id: int, version: str) -> str:
    """A button posting the promote form (same-origin only: ``service.app._form_body``)."""
    v = escape(version)
    return (
        f'<form class="promote" method="post" action="/projects/{project_id}/promote">'
        f'<input type="hidden" name="version" value="{v}"><button type="submit">serve {v}</button></form>'
    )


_ISSUE_COLOUR = {"missed object": "#d62728", "extra box": "#ff7f0e", "wrong class": "#9467bd"}


def svg_regions(boxes: list[dict[str, Any]], issues: list[dict[str, Any]], width: int = 160, height: int = 120) -> str:
    """One task's annotated boxes (grey, with their labels) and suspected regions (coloured by kind,
    dashed, numbered as in the list) as an inline SVG; regions in percent of the image."""

    def rect(r: dict[str, Any], style: str) -> str:
        x, y = _pct(r.get("x")) * width / 100, _pct(r.get("y")) * height / 100
        w, h = _pct(r.get("width")) * width / 100, _pct(r.get("height")) * height / 100
        return f'<rect {style} x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}"/>'

    parts = [f'<rect width="{width}" height="{height}" fill="#f4f4f4" stroke="#999"/>']
    for b in boxes:
        parts.append(rect(b, 'fill="none" stroke="#555"'))
        parts.append(
            f'<text x="{_pct(b.get("x")) * width / 100 + 1:.1f}" y="{_pct(b.get("y")) * height / 100 + 8:.1f}" '
            f'font-size="8" fill="#555">{escape(str(b.get("label", "")))}</text>'
        )
    for n, i in enumerate(issues, start=1):
        colour = _ISSUE_COLOUR.get(str(i.get("kind")), "#1f77b4")
        region = i.get("region") or {}
        parts.append(
            rect(region, f'class="issue" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="4 2"')
        )
        parts.append(
            f'<text x="{_pct(region.get("x")) * width / 100 + 1:.1f}" '
            f'y="{(_pct(region.get("y")) + _pct(region.get("height"))) * height / 100 - 2:.1f}" '
            f'font-size="9" font-weight="bold" fill="{colour}">{n}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def _pct(value: Any) -> float:
    return max(0.0, min(100.0, float(value))) if isinstance(value, int | float) else 0.0


def _mistakes_section(view: ProjectView) -> str:
    report = view.mistakes or {"tasks": []}
    if report.get("supported") is False:
        return f'<p id="mistakes">{escape(str(report.get("reason", "not scored")))}</p>'
    tasks = report["tasks"]
    if not tasks:
        return (
            '<p id="mistakes">No annotation scored yet: scores come after a pre-annotation, from a version '
            "not trained on the annotation.</p>"
        )
    map50 = {p.version: p.map50 for p in view.points}
    rows = []
    for t in tasks[:MISTAKES_SHOWN]:
        issues = [i for i in t.get("issues") or [] if isinstance(i, dict)]
        listed = "".join(
            f"<li>{escape(str(i.get('kind')))}: {escape(str(i.get('label')))}"
            + (f" (model: {escape(str(i['predicted']))})" if i.get("predicted") else "")
            + f" &middot; {_num(i.get('score'), 2)}</li>"
            for i in issues
        )
        rows.append(
            [
                escape(str(t.get("task"))),
                _num(t.get("score")),
                f"{escape(str(t.get('version')))} (mAP50 {_num(map50.get(str(t.get('version'))))})",
                f"<ol>{listed}</ol>" if listed else "-",
                svg_regions([b for b in t.get("boxes") or [] if isinstance(b, dict)], issues),
            ]
        )
    return (
        f'<div id="mistakes"><p>{len(tasks)} annotated tasks scored on {escape(str(report.get("at", "-")))}, '
        f"{escape(str(report.get('unscored', 0)))} not scored (every version was trained on them); the "
        f"{min(len(tasks), MISTAKES_SHOWN)} the model disagrees with most, worst first (label quality: low = likely "
        "mistaken; in Label Studio, the Data Manager tab <em>labelloop: possible label mistakes</em>). Grey: the "
        "annotation's boxes; dashed: the suspected regions, numbered as listed. A judging version with a low mAP50 "
        "also flags its own mistakes: objects it barely sees, classes it confuses (bench/mistakes).</p>"
        f"{_table(['task', 'label quality', 'judged by', 'suspected', 'where'], rows)}</div>"
    )


def _calls_section(view: ProjectView) -> str:
    pid = view.project_id
    url = escape(view.base_url.rstrip("/"))
    other = next((p.version for p in reversed(view.points) if p.status != "serving"), "v1")
    target = f"serves {escape(view.rollback_target)}" if view.rollback_target else "has no earlier version to serve"
    rollback = (
        f'<form class="rollback" method="post" action="/projects/{pid}/rollback">'
        f'<button type="submit">roll back to {escape(view.rollback_target)}</button></form>'
        if view.rollback_target
        else ""
    )
    return (
        "<p>Promote serves a given version (the buttons in the versions table); rollback serves the one "
        f"served before the current one (now it {target}).</p>{rollback}"
        "<p>The same from a terminal, with the receiver's Basic auth credentials:</p>"
        f"<pre>curl -u USER:PASS -X POST -H 'Content-Type: application/json' "
        f'-d \'{{"version": "{escape(other)}"}}\' {url}/projects/{pid}/promote\n'
        f"curl -u USER:PASS -X POST {url}/projects/{pid}/rollback</pre>"
        f"<p>or <code>labelloop models promote {pid} {escape(other)}</code>, "
        f"<code>labelloop models rollback {pid}</code>.</p>"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:60em;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    ".bar{display:inline-block;height:10px;background:#1f77b4}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}"
    ".warn{color:#b00;font-weight:bold}"
)


def render(view: ProjectView) -> str:
    """The page's HTML (UTF-8 text): served version and lineage, learning curve, per-class
    AP50/precision/recall of the served version, running training and pre-annotation, versions,
    the possible label mistakes and the promote/rollback calls."""
    m = view.served_manifest
    history = [
        [escape(str(h.get("at", "-"))), escape(str(h["version"])), escape(str(h.get("reason", "-")))]
        for h in view.history[:10]
    ]
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>labelloop project {view.project_id}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>labelloop: project {view.project_id}</h1>"
        f"<h2>Served version</h2>{_served_section(view)}"
        "<h2>Learning curve</h2>"
        "<p>mAP50 and mAP50-95 of every version on the validation split, against the annotations it was "
        "trained on.</p>"
        f'<div id="curve">{svg_learning_curve(view.points)}</div>'
        f"<h2>Per class (served version)</h2>{_class_section(m)}"
        f"<h2>Now</h2>{_running_section(view)}"
        f"<h2>Versions</h2>{_versions_section(view)}"
        f"<h2>Download</h2>{_downloads_section(view)}"
        f"<h2>Possible label mistakes</h2>{_mistakes_section(view)}"
        f"<h2>Served-version changes</h2>{_table(['at', 'version', 'reason'], history)}"
        f"<h2>Promote and roll back</h2>{_calls_section(view)}"
        "</body></html>\n"
    )
