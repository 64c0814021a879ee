"""Loopback Ollama double (see PROTOCOLS.md section 5)."""
