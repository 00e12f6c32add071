"""labelloop receiver: the Label Studio ML backend protocol over HTTP, thin and fast."""
