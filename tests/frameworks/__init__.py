"""Framework-style optimizer builders, named in a matrix as `tests.frameworks.<module>:<function>`."""
