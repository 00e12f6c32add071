"""Self-training on the unlabeled pool: the served version's confident predictions on unlabeled
tasks become pseudo-labels in the train split of the next training (detect only).

Two halves, on the two sides of the training child process (``labelloop.training.child``):

- ``prepare`` (``worker``) runs in the train worker (no torch there): it decides whether pseudo-labels apply
  (setting on, a detect project, a served version trained for the same task and control tag
  that knows every label of the config), lists the project's unlabeled tasks in Label Studio
  (``unlabeled_pool``: no annotation, not skipped, not in the export the dataset was built
  from, never a task whose id hashes into the validation split), fetches their images through
  the guarded image cache (``labelloop.labelstudio.media``) and writes the job into the training spec
  (``spec["pseudo"]``);
- ``label_unlabeled`` (``child``) runs in the child before training: the served version predicts the pool
  at ``low_conf`` (``LABELLOOP_PREDICT_CONF``), ``choose`` keeps the images that qualify, most
  confident first, up to the cap, and ``write_overlay`` writes them as an Ultralytics detect
  dataset of their own (``<run>/pseudo/images/train``, ``labels/train``, ``cls cx cy w h``) plus
  a ``data.yaml`` whose ``train`` lists the human train folder and that one and whose ``val`` is
  the human one. The project's dataset folder is never touched: the next build starts from
  human labels only, and a task annotated since is a human label there.

The rule (``qualifies``): every region the served version predicts on the image at ``low_conf``
or more is at ``conf`` or more; a region in the doubtful band ``[low_conf, conf)`` disqualifies
the image (half-found objects would be taught as background), and so does an image with no
region at all: a model that finds nothing is the uncertain case (``labelloop.task_types.informativeness``
ranks it first to label), not evidence of an empty image. At most ``ratio`` x the human train
images are added (``cap_for``). The promotion gate is unchanged: the candidate is scored on the
human validation split only.

Modules: ``rule`` (the pure rule), ``worker`` (the train worker's half), ``job`` (what it hands the
child), ``child`` (the training child's half); their public names are gathered here.
"""

from __future__ import annotations

from labelloop.dataset.pseudo.child import PREDICT_BATCH, label_unlabeled, predict, write_overlay
from labelloop.dataset.pseudo.job import PseudoJob
from labelloop.dataset.pseudo.rule import ImagePrediction, Region, cap_for, choose, qualifies, unlabeled_pool
from labelloop.dataset.pseudo.worker import POOL_PER_SLOT, Prepared, PseudoSource, fetch_images, list_unlabeled, prepare

__all__ = [
    "POOL_PER_SLOT",
    "PREDICT_BATCH",
    "ImagePrediction",
    "Prepared",
    "PseudoSource",
    "PseudoJob",
    "Region",
    "cap_for",
    "choose",
    "fetch_images",
    "label_unlabeled",
    "list_unlabeled",
    "predict",
    "prepare",
    "qualifies",
    "unlabeled_pool",
    "write_overlay",
]
