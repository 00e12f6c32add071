"""labelloop's process shells on the HTTP side: the receiver (``service.app``: the Label Studio ML
backend protocol over HTTP, thin and fast) and the command line (``service.cli``).
"""
