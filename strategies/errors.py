"""The one error of every settings check: strategy, user-level DP, DP-SGD and run settings."""


class SettingsError(ValueError):
    """A run-config value of the wrong type, out of range or incompatible with another knob;
    the message starts with the run-config key."""
