"""The agents shipped with relaybot. Each registers itself under the ``relaybot.agents``
entry point (``pyproject.toml``); ``app.plugins.load_agents`` builds them at start-up."""
