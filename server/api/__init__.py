"""Python stubs generated from proto/ by setup.py at build time (not committed)."""
