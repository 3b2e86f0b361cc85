"""The one exception type scg raises for bad input; it names the site, coagent or argument."""


class ScgError(ValueError):
    """Bad input to scg: the message names the site (and step), coagent or argument at fault."""
