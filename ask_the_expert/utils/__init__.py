"""Plumbing that is not the method: atomic writes, hashing, command-line errors, option groups, fingerprints."""
