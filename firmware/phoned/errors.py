"""The phoned error tree: every error the service raises on purpose.

Owns: exception classes only. Each class also inherits the builtin it resembles, so
callers that know nothing of phoned can still catch it (`except ValueError`).
"""


class PhonedError(Exception):
    """Root of every error phoned raises on purpose; its message is for a person."""


class ConfigError(PhonedError, ValueError):
    """A settings file is missing, unreadable or invalid (SPEC §3)."""


class ProbeError(PhonedError, OSError):
    """A prober socket could not be opened or used."""


class SipError(PhonedError, RuntimeError):
    """The SIP stack could not start or act."""


class ControlError(PhonedError, ConnectionError):
    """The control socket of the running service cannot be reached or answered badly."""


class VpnError(PhonedError, OSError):
    """The tunnel could not be created, configured, switched or read."""


class ProvisioningError(PhonedError, OSError):
    """The provisioning file could not be fetched or kept (SPEC §7)."""
