"""A module that raises RuntimeError while it is imported."""

raise RuntimeError("import_raise refuses to be imported")
