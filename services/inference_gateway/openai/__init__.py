"""The OpenAI-compatible HTTP API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``).

``protocol`` holds the request and response models, one serving class per endpoint turns the
engine's deltas into responses (``accumulator`` is what streamed and whole answers share), and
``routes`` maps the endpoints onto them behind ``admission`` (API keys, rate limits, timeouts).
"""
