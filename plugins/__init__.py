"""Builtin plugins: one module per algorithm, registered exactly like third-party plugins."""
