"""What Label Studio told labelloop: the change log of recorded webhooks, its check, the ledger and
reconciliation, the project webhook's health, retired projects.
"""
