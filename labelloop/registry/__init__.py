"""The versioned model registry on disk and what lives beside it: versions, CURRENT, the index and
retention, notifications, the promotion gate, the learning curve, exports and model cards, per-
project params and base models.
"""
