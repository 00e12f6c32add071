"""Serving a version: /predict (the predictor, selections, video tracks) and pre-annotation with
its task order (diversity, first picks).
"""
