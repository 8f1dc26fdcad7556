"""Errors that carry a message meant for the person running hami (shown without a traceback)."""


class HamiError(Exception):
    """Bad input or configuration, worded for the user."""
