"""The Stello engine: pure Python, no Django, DRF or Channels.

It talks to storage, the LLM, locks and background work only through the Protocols in
`ports.py`; `sessions_app.store` and `sessions_app.runtime` implement them with Django.
"""
