"""serving: the triage pipeline that runs a model bundle on photos (and, later, the HTTP service)."""
