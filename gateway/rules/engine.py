"""Placeholder: filled in by its feature (see store/hooks.py HOOK_MODULES)."""
