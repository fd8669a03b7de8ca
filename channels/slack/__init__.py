"""Slack: mention the bot, watch it work in the thread, approve with buttons.

``inbound`` holds the Bolt app and its listeners (verify, append, answer: nothing slow);
``outbound`` sends the outbox's rows (replies, approval requests, their updates);
``blocks`` builds the Block Kit messages; ``config`` reads who may approve what.
"""
