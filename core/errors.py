"""The error tree. Every error carries the text a user may see; none carries a traceback or a secret.

MetaRouterError            base; `.user_message` is safe to show in a chat
├── ConfigError            bad settings: start-up stops with exit 2
├── RoutingError           no decision could be made at all (the inventory is empty)
├── MetaRouterFailure      the meta-router call failed; `.reason` is a contract fallback_reason.
│                          Never reaches the user: the chain falls back to the local router.
├── GenerationError        no model could answer
│   ├── OllamaUnavailable  no Ollama host answered
│   ├── ModelUnavailable   the model is not local and may not or could not be pulled
│   │   └── DiskBudgetExceeded
│   └── StreamFailed       the stream broke or went idle after it started
└── StoreUnavailable       the database could not be reached
"""

from __future__ import annotations


class MetaRouterError(Exception):
    user_message = "Something went wrong while answering. Please try again."

    def __init__(self, message: str | None = None, *, user_message: str | None = None) -> None:
        super().__init__(message or user_message or self.user_message)
        if user_message is not None:
            self.user_message = user_message
        elif message is not None and type(self).user_message == MetaRouterError.user_message:
            self.user_message = message


class ConfigError(MetaRouterError):
    pass


class RoutingError(MetaRouterError):
    user_message = "No model is available to answer: the inventory is empty."


class MetaRouterFailure(MetaRouterError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"meta-router failed: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class GenerationError(MetaRouterError):
    user_message = "The model could not answer this time. Please try again in a moment."


class OllamaUnavailable(GenerationError):
    user_message = "No Ollama server is reachable right now, so no local model can answer."


class ModelUnavailable(GenerationError):
    user_message = "The chosen model is not available on any Ollama server."


class DiskBudgetExceeded(ModelUnavailable):
    user_message = "Pulling that model would exceed the configured disk budget."


class StreamFailed(GenerationError):
    user_message = "The answer stopped part-way because the model server stopped responding."


class StoreUnavailable(MetaRouterError):
    user_message = "The database is unavailable right now."
