"""Label Studio access: the SDK client, media (images and videos fetched safely), the export, task
pages, Data Manager tabs, sampling, retired predictions.
"""
