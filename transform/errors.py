"""The error hierarchy: every failure is either worth a retry or worth stopping for."""

from __future__ import annotations


class SoftcartError(Exception):
    """Base of every error softcart-sync raises on purpose."""


class ConfigError(SoftcartError):
    """A setting is missing or wrong; the message names the setting and the fix."""


class TransientError(SoftcartError):
    """A failure that may pass (a lost connection, a server restarting): retry with backoff."""


class FatalError(SoftcartError):
    """A failure that retrying will not fix: stop, log the position, exit non-zero."""


class SourceColumnGone(TransientError):
    """A column asked of the source is no longer there (a later DDL dropped it): what the followed
    definition still names is read again once the stream reaches that DDL."""
