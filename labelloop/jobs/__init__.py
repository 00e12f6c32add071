"""What the Celery tasks do (jobs), and the training run's lifecycle: trigger, lease, locks, progress, pipeline."""
