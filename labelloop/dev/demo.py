"""``labelloop demo``: the whole loop on a demo project, from a fresh machine.

Starts Redis (unless ``LABELLOOP_REDIS_URL`` points at a running one), the receiver, the
workers and Flower; when ``LABEL_STUDIO_URL`` is not set, installs and starts a local Label
Studio too. Then it creates a project of generated images, connects labelloop as the
project's ML backend, annotates some images through the API, and shows the loop produce a
new model version and predictions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from labelloop.dev.stack import Stack, free_port, label_studio_binary, wait_until
from labelloop.dev.synthetic import LABEL_CONFIG, Sample, make_sample
from labelloop.registry.store import Registry
from labelloop.settings import Settings

DEMO_USER = "demo@labelloop.local"
DEMO_PASSWORD = "labelloop-demo"
DEMO_TOKEN = "1abe11oop0000000000000000000000000000000"[:40]


class LabelStudioAPI:
    """The few Label Studio calls the demo and the tests make, through label-studio-sdk.

    Args:
        url: Label Studio base URL.
        token: legacy API token or personal access token.
    """

    def __init__(self, url: str, token: str) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.token = token
        self.sdk = LabelStudio(base_url=self.url, api_key=token)

    def create_project(self, title: str, label_config: str = LABEL_CONFIG) -> int:
        project: Any = self.sdk.projects.create(title=title, label_config=label_config)
        return int(project.id)

    def upload(self, project_id: int, files: list[tuple[str, bytes, str]]) -> None:
        """Upload files as tasks in one ``POST /api/projects/{id}/import``: ``(name, bytes, mime)``
        each, one form field per file (Label Studio keeps one file per field name)."""
        form = {f"file{i}": file for i, file in enumerate(files)}
        resp = httpx.post(
            f"{self.url}/api/projects/{project_id}/import",
            headers={"Authorization": f"Token {self.token}"},
            files=form,
            timeout=300,
        )
        resp.raise_for_status()

    def import_images(self, project_id: int, samples: list[Sample]) -> list[int]:
        """Upload PNGs as tasks (``POST /api/projects/{id}/import``); returns task ids in order."""
        self.upload(project_id, [(f"img{i:04d}.png", s.png, "image/png") for i, s in enumerate(samples)])
        tasks: list[Any] = sorted(self.sdk.tasks.list(project=project_id), key=lambda t: t.id)
        by_name = {str(t.data["image"]).rsplit("-", 1)[-1]: int(t.id) for t in tasks}
        return [by_name[f"img{i:04d}.png"] for i in range(len(samples))]

    def connect_backend(
        self,
        project_id: int,
        backend_url: str,
        basic_auth: tuple[str, str] | None = None,
        extra_params: dict[str, Any] | None = None,
    ) -> int:
        """Add labelloop as the project's ML backend; Label Studio then calls ``/setup`` (with the
        Basic credentials and extra params, when given) and creates a webhook to
        ``<backend_url>/webhook``."""
        options: dict[str, Any] = {}
        if basic_auth:
            options = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
        if extra_params is not None:
            options["extra_params"] = extra_params
        ml = self.sdk.ml.create(project=project_id, url=backend_url, title="labelloop", is_interactive=False, **options)
        return int(ml.id)

    def set_webhook_headers(self, project_id: int, backend_url: str, headers: dict[str, str]) -> int:
        """Add headers (e.g. labelloop's webhook secret) to the webhook Label Studio created for
        the ML backend. ``PATCH /api/webhooks/{id}/`` clears ``actions`` unless they are sent
        again, so they are resent as they were."""
        url = backend_url.rstrip("/") + "/webhook"
        hooks = [h for h in self.sdk.webhooks.list(project=str(project_id)) if h.url == url]
        if not hooks:
            raise LookupError(f"project {project_id} has no webhook to {url}")
        hook: Any = hooks[0]
        self.sdk.webhooks.update(
            id=hook.id,
            url=url,
            headers=headers,
            actions=list(hook.actions or []),
            send_for_all_actions=hook.send_for_all_actions,
            send_payload=hook.send_payload,
        )
        return int(hook.id)

    def annotate(self, task_id: int, result: list[dict[str, Any]]) -> int:
        return int(self.sdk.annotations.create(id=task_id, result=result, was_cancelled=False).id)

    def train(self, ml_backend_id: int) -> None:
        """What Label Studio's "Start Training" button does: START_TRAINING to the backend."""
        self.sdk.ml.train(id=ml_backend_id)

    def backend_version(self, ml_backend_id: int) -> str:
        return str(self.sdk.ml.get(id=ml_backend_id).model_version or "")

    def sdk_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """A task's stored predictions (``GET /api/predictions/?task=``), without asking the backend."""
        resp = httpx.get(
            f"{self.url}/api/predictions/",
            params={"task": task_id},
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        resp.raise_for_status()
        return list(resp.json())

    def delete_predictions(self, task_id: int) -> None:
        for p in self.sdk_predictions(task_id):
            self.sdk.predictions.delete(id=int(p["id"]))

    def predictions_for(self, task_id: int) -> list[dict[str, Any]]:
        """Ask Label Studio for a task's predictions as its Data Manager does
        (``retrieve_tasks_predictions``), which calls the backend's ``/predict`` for a task
        without a prediction of the current model version, then read them back."""
        resp = httpx.post(
            f"{self.url}/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": self.project_of(task_id)},
            headers={"Authorization": f"Token {self.token}"},
            json={"selectedItems": {"all": False, "included": [task_id]}},
            timeout=120,
        )
        resp.raise_for_status()
        return self.sdk_predictions(task_id)

    def project_of(self, task_id: int) -> int:
        task: Any = self.sdk.tasks.get(id=str(task_id))
        return int(task.project)


DEMO_WIDTH, DEMO_HEIGHT = 192, 144


def _wait_for_version(registry: Registry, project_id: int, after: str, timeout_s: float) -> str:
    """The name of the first version newer than ``after`` (promoted or rejected), once published."""

    def newest() -> str:
        names = [v.name for v in registry.list_versions(project_id)]
        return names[-1] if names else ""

    wait_until(lambda: newest() not in ("", after), timeout_s, "a new model version", interval_s=2)
    return newest()


def _sees(api: LabelStudioAPI, ml_id: int, version: str) -> Callable[[], bool]:
    return lambda: api.backend_version(ml_id) == version


def _score_held_out(
    api: LabelStudioAPI, held_out: list[tuple[int, Sample]], version: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """Score the predictions Label Studio stores from ``version`` for the held-out tasks against
    their known truth (``labelloop.training.scoring``); tasks pre-annotation has not reached within a minute
    are asked for through Label Studio (which calls ``/predict``)."""
    from labelloop.training.scoring import Det, regions_to_dets, score

    def stored(task_id: int) -> list[dict[str, Any]]:
        return [p for p in api.sdk_predictions(task_id) if p.get("model_version") == version]

    try:
        wait_until(lambda: all(stored(t) for t, _ in held_out), 60, "pre-annotation", interval_s=1)
    except TimeoutError:
        say("pre-annotation has not reached every demo task yet: asking Label Studio for the rest")
    preds, truths, with_boxes = [], [], 0
    for task_id, sample in held_out:
        mine = stored(task_id) or [p for p in api.predictions_for(task_id) if p.get("model_version") == version]
        regions = [r for p in mine[:1] for r in (p.get("result") or [])]
        with_boxes += bool(regions)
        preds += regions_to_dets(task_id, regions, sample.width, sample.height)
        truths += [Det(task_id, label, 1.0, (x, y, x + w, y + h)) for label, x, y, w, h in sample.boxes]
    return {**score(preds, truths), "with_boxes": with_boxes}


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; with ``--exit`` stop after the loop has shown predictions.

    Long because it is the demo's script: its steps in the order they are printed.
    """
    from labelloop.logconfig import configure_logging

    if args.images <= args.annotate * args.rounds:
        raise SystemExit(f"--images must be more than --annotate x --rounds ({args.annotate * args.rounds})")
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    base = Settings()
    configure_logging(base.log_level, base.log_json if base.log_json is not None else False, process="demo")
    env = {k: v for k, v in os.environ.items() if k.startswith("LABELLOOP_")}
    env.setdefault("LABELLOOP_MODELS_DIR", str(workdir / "models"))
    env.setdefault("LABELLOOP_CACHE_DIR", str(workdir / "cache"))
    # The recipe chooses epochs, imgsz, batch and nbs from the data; the demo only shortens the
    # wall-clock budget so that both rounds fit in a few minutes on 2 CPU cores.
    env.setdefault("LABELLOOP_TRAIN_TIME_S", "75")
    env.setdefault("LABELLOOP_TRAIN_EVERY_N", str(max(2, args.annotate)))
    stack = Stack(workdir, env)

    def say(msg: str) -> None:
        print(f"[labelloop demo] {msg}", flush=True)

    try:
        redis_url = os.environ.get("LABELLOOP_REDIS_URL")
        if not redis_url:
            redis_url = stack.start_redis(free_port(), workdir / "redis")
            say(f"Redis on {redis_url}")
        stack.env["LABELLOOP_REDIS_URL"] = redis_url

        ls_url, token = base.label_studio_url, base.api_key
        if not ls_url or not token:
            venv = Path(os.environ.get("LABELLOOP_LS_VENV", workdir / "label-studio-venv"))
            say(f"no LABEL_STUDIO_URL set: starting a local Label Studio (installing into {venv} on first run)")
            binary = label_studio_binary(venv)
            ls_url = stack.start_label_studio(
                binary, args.ls_port, workdir / "label-studio", DEMO_USER, DEMO_PASSWORD, DEMO_TOKEN
            )
            token = DEMO_TOKEN
            say(f"Label Studio on {ls_url}  (login {DEMO_USER} / {DEMO_PASSWORD})")
        stack.env["LABEL_STUDIO_URL"] = ls_url
        stack.env["LABEL_STUDIO_API_KEY"] = token

        backend = stack.start_receiver(args.port)
        for queue in ("events", "train", "predict", "preannotate"):
            stack.start_worker(queue)
        flower = stack.start_flower(free_port())
        say(f"receiver on {backend}, Flower on {flower}")

        api = LabelStudioAPI(ls_url, token)
        project_id = api.create_project(f"labelloop demo {time.strftime('%H:%M:%S')}")
        samples = [make_sample(seed, DEMO_WIDTH, DEMO_HEIGHT) for seed in range(args.images)]
        task_ids = api.import_images(project_id, samples)
        ml_id = api.connect_backend(project_id, backend)
        say(f"project {project_id}: {len(task_ids)} tasks, ML backend {ml_id}, version {api.backend_version(ml_id)!r}")

        registry = Registry(Path(env["LABELLOOP_MODELS_DIR"]))
        # The tasks no round annotates are the demo's held-out set: their truth is known.
        held_out = list(zip(task_ids, samples, strict=True))[args.annotate * args.rounds :]
        served = newest = ""
        for round_no in range(1, args.rounds + 1):
            todo = list(zip(task_ids, samples, strict=True))[args.annotate * (round_no - 1) : args.annotate * round_no]
            for task_id, sample in todo:
                api.annotate(task_id, sample.ls_result())
            say(
                f"round {round_no}: annotated {args.annotate * round_no} tasks in all; training starts after "
                f"{env['LABELLOOP_TRAIN_EVERY_N']} new annotations"
            )
            version = newest = _wait_for_version(registry, project_id, after=newest, timeout_s=1800)
            record = registry.get(project_id, version).record
            args_ = record.train_args
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in record.timings.items())
            say(
                f"new model version {version} ({'promoted' if record.promotion.promoted else 'rejected'}): "
                f"{record.recipe.epochs_run} epochs at imgsz {args_.get('imgsz')}, batch {args_.get('batch')}, "
                f"nbs {args_.get('nbs')}; {stages}"
            )
            if record.promotion.promoted:
                served = version
                # Label Studio asks /setup for the version whenever it reads the backend.
                wait_until(_sees(api, ml_id, version), 60, "Label Studio sees the new version")
            report = _score_held_out(api, held_out, served, say)
            say(
                f"{served}: boxes on {report['with_boxes']}/{len(held_out)} unlabeled demo tasks "
                f"({report['predictions']} regions), mAP50 {report['map50']:.3f}, precision "
                f"{report['precision']:.2f}, recall {report['recall']:.2f}"
            )
        say(f"open {ls_url}/projects/{project_id} to label more; Ctrl-C stops everything")
        if args.exit:
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop_all()
