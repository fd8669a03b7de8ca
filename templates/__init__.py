"""Jinja2 templates: prompts (and, later, email bodies)."""
