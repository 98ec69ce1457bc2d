"""The one error base of mvcap: every error meant for the user derives from it."""


class MvcapError(ValueError):
    """An error in the user's input or environment, with a message that says how to fix it."""
