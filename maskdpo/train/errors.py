"""The error a bad configuration raises, in a module of its own: the loader (config.py) and the
checks (validate.py) both raise it, and neither has to import the other for it."""


class ConfigError(ValueError):
    """A configuration field has a value that cannot run; the message names the field and the fix."""
