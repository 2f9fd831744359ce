"""Container images: how a job's image gets onto its hosts."""
