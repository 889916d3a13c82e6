"""The command line: one small module per command group, each command one call into recipes/."""
