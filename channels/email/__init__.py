"""Email: people email the bot, or get its approval requests by email, and simply reply.

``tokens`` signs what identifies a thread and a request (a plus-address and one-click links);
``parse`` reads a raw message (reply text without quotes or signature, charsets, attachments);
``outbound`` sends the outbox's email rows with aiosmtplib; ``inbound`` matches a message to
its thread and appends it; ``imap`` fetches mail with IDLE; ``web`` has the provider webhook
and the approval link pages.
"""
