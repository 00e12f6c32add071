"""An annotator in Label Studio's label stream, through its API: take the next task, submit or skip.

What Label Studio's "Label All Tasks" does for one user (Label Studio 1.23.2):
``GET /api/projects/{id}/next/`` (``projects.api.ProjectNextTaskAPI``) runs
``projects.functions.next_task.get_next_task`` for the token's user: tasks the user has not
annotated or skipped, unlabeled; a task already locked for the user comes back first; otherwise
the project's ``sampling`` picks ("Sequential sampling": task order; "Uniform sampling": random;
"Uncertainty sampling": tasks with a prediction of the project's ``model_version``, fewest
solved in their prediction ``cluster`` first, then lowest prediction ``score``; random while no
task has one). The task it serves is locked for the user (``Task.set_lock``) and comes with its
predictions for pre-labeling; 404 when nothing is left.

Submitting is ``POST /api/tasks/{id}/annotations/`` with the result, which releases the lock.
Skipping is the same call with ``was_cancelled`` (the editor's Skip button: an empty, cancelled
annotation); a skipped task is not served to the same user again (the project's default
``skip_queue`` is "Requeue for others"), does not count as labeled (``total_annotations``
counts completed annotations only) and is not trained on (labelloop drops cancelled
annotations), so it keeps getting pre-annotated.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

NEXT_TASK_TRIES = 5


class Annotator:
    """One Label Studio user, by API token.

    Args:
        url: Label Studio base URL.
        token: the user's legacy API token.
    """

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Token {token}"}, timeout=300)

    def close(self) -> None:
        self.http.close()

    def next_task(self, project_id: int, backoff_s: float = 0.5) -> dict[str, Any] | None:
        """The task Label Studio serves this user next (``id``, ``data``, ``predictions``, ``queue``:
        which of its queues picked it), now locked for the user; None when none is left.

        Label Studio on SQLite answers 500 ("database is locked") when a request's write meets
        another's, e.g. its session middleware's while labelloop imports predictions: as the
        editor's user opens the next task again, this asks again, ``NEXT_TASK_TRIES`` times in all,
        waiting ``backoff_s`` doubled each time; then the 5xx is raised (``httpx.HTTPStatusError``).
        """
        for attempt in range(NEXT_TASK_TRIES):
            resp = self.http.get(f"/api/projects/{project_id}/next/")
            if resp.status_code < 500 or attempt == NEXT_TASK_TRIES - 1:
                break
            time.sleep(backoff_s * 2**attempt)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return dict(resp.json())

    def submit(self, task_id: int, result: list[dict[str, Any]]) -> int:
        """Save ``result`` (Label Studio regions) as the user's annotation; returns its id."""
        resp = self.http.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": False})
        resp.raise_for_status()
        return int(resp.json()["id"])

    def skip(self, task_id: int) -> int:
        """Skip the task as the editor's Skip button does; returns the cancelled annotation's id."""
        resp = self.http.post(
            f"/api/tasks/{task_id}/annotations/",
            params={"was_cancelled": 1},
            json={"result": [], "was_cancelled": True},
        )
        resp.raise_for_status()
        return int(resp.json()["id"])

    def project(self, project_id: int) -> dict[str, Any]:
        """``GET /api/projects/{id}/``: the project's settings (``sampling``, ``model_version``, ...)."""
        resp = self.http.get(f"/api/projects/{project_id}/")
        resp.raise_for_status()
        return dict(resp.json())
