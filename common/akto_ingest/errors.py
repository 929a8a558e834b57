"""The project's exceptions: one small hierarchy, so callers can catch as broadly as they need."""


class AktoIngestError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AktoIngestError):
    """A configuration value is missing or invalid; the message names the key and what it accepts.

    Deliberately not a ValueError: LiteLLM 1.108.7 catches ValueError and TypeError from a
    guardrail's constructor and starts the proxy *without* that guardrail, which would leave traffic
    unchecked. Any other exception stops the proxy at start, as a bad config must.
    """


class UnsupportedLiteLLM(ConfigError):
    """The installed LiteLLM is outside the releases this guardrail is tested with; raised when
    ``akto_hook`` is imported, before any of LiteLLM's internals are."""


class RecordError(AktoIngestError, ValueError):
    """A record cannot be decoded or does not match the record schema."""


class RecordTooLarge(RecordError):
    """A record is over the size Akto accepts, so sending it could never succeed."""


class AktoError(AktoIngestError):
    """Akto could not give a usable answer."""


class AktoUnreachable(AktoError):
    """Akto could not be reached, or did not answer within the timeout."""


class AktoHTTPError(AktoError):
    """Akto answered with a status other than 200."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"Akto answered HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class AktoBadResponse(AktoError):
    """Akto answered 200 with a body that is not the JSON it should be."""
