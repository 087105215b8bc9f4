"""Errors a user can cause and fix. Their messages name the problem and the fix."""


class ConfigError(ValueError):
    """A config key, type or value is wrong (raised before anything runs)."""
