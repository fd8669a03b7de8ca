"""Email: people email the bot, or get its approval requests by email, and simply reply.

``tokens`` signs what identifies a thread and a request (a plus-address and one-click links);
``parse`` reads a raw message within ``mime``'s bounds (reply text without quotes or
signature, charsets, attachments), ``parsing`` does it off the event loop; ``outbound`` sends
the outbox's email rows with aiosmtplib; ``inbound`` matches a message to its thread and
appends it; ``intake`` takes each message on its own and holds what can never be processed
in quarantine (``cli``: ``relaybot intake``); ``imap`` fetches mail with IDLE; ``web`` has
the provider webhooks (``postmark``: its JSON as a message) and the approval link pages.
"""
