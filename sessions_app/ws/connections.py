"""The in-process registry of open WebSocket connections.

One entry per accepted connection of THIS process: `{connectionId, userId, spaceId, sessionId}`.
It is introspection and bookkeeping only; nothing here is persisted or shared between
processes (a connection lives in exactly one process; `session.updated` events cross processes
through the channel layer instead).
"""

from __future__ import annotations

from dataclasses import dataclass


class UnknownConnection(LookupError):
    def __init__(self, connection_id: str) -> None:
        super().__init__(f"Connection not found: {connection_id}")
        self.connection_id = connection_id


@dataclass(slots=True)
class ConnectionState:
    connection_id: str
    user_id: str
    space_id: str
    session_id: str | None = None


class ConnectionRegistry:
    def __init__(self) -> None:
        self._states: dict[str, ConnectionState] = {}

    def bind(self, connection_id: str, user_id: str, space_id: str) -> ConnectionState:
        """Register a connection (not in a session). Binding a known id replaces its state."""
        state = ConnectionState(connection_id, str(user_id), str(space_id))
        self._states[connection_id] = state
        return state

    def get_state(self, connection_id: str) -> ConnectionState | None:
        return self._states.get(connection_id)

    def attach_session(self, connection_id: str, session_id: str) -> None:
        """Record the session the connection entered; raises UnknownConnection."""
        state = self._states.get(connection_id)
        if state is None:
            raise UnknownConnection(connection_id)
        state.session_id = session_id

    def detach_session(self, connection_id: str) -> str | None:
        """Clear the connection's session; the previous one (None for an unknown id)."""
        state = self._states.get(connection_id)
        if state is None:
            return None
        previous, state.session_id = state.session_id, None
        return previous

    def unbind(self, connection_id: str) -> ConnectionState | None:
        """Forget the connection; its final state, or None if it was unknown."""
        return self._states.pop(connection_id, None)

    def states(self) -> list[ConnectionState]:
        """Every open connection of this process (a snapshot)."""
        return list(self._states.values())

    @property
    def size(self) -> int:
        return len(self._states)

    def reset(self) -> None:
        """Forget everything (tests)."""
        self._states.clear()


connections = ConnectionRegistry()
