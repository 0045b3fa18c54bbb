"""One exception tree for the whole project."""


class MyasonError(Exception):
    """Base of every error myason raises on purpose."""


class ConfigError(MyasonError):
    """A configuration file or value is wrong; the message names the key."""

    def __init__(self, key, message):
        self.key = key
        super().__init__("%s: %s" % (key, message) if key else message)


class CaptureError(MyasonError):
    """A packet source cannot be opened or read."""


class WireError(MyasonError):
    """A datagram does not follow the wire format; `reason` is a short counter name."""

    def __init__(self, reason, message=""):
        self.reason = reason
        super().__init__("%s%s" % (reason, ": " + message if message else ""))


class KeyFileError(MyasonError):
    """A key file is missing, malformed or has unsafe permissions."""
