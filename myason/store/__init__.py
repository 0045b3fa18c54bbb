"""Storage: the writer interface and registry, one writer per file."""
