"""Channels: the ways people reach relaybot and relaybot reaches them.

Each adapter verifies and parses inbound requests into calls on ``app.service.Threads``
(thin: no business logic here), and sends outbound contacts. ``http_api`` is the HTTP API.
"""
