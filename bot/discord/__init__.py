"""The Discord adapter (issue 4): see client.py."""
