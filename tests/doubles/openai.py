"""Loopback OpenAI chat-completions double (see PROTOCOLS.md section 6)."""
