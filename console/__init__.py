"""The web console: a single page under /console/ that talks to the public REST and WebSocket
APIs with an API key, like any other client (see README "Web console")."""
