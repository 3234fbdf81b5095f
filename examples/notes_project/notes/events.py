"""The project's events and who may publish or consume them: what mesh.toml names as
`event_types` (`meshctl events tail` decodes with it) and `event_identities` (`meshctl
up` gives each service NATS credentials and permissions from it).

A real project's payloads are its own protobuf messages (`meshctl contracts build`
compiles them); a well-known wrapper keeps this example free of a build step."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import StringValue

from mesh.events.nats_auth import Consumes, EventIdentity
from mesh.events.types import EventTypes

EVENTS = EventTypes({"note.created": StringValue})
IDENTITIES = (
    EventIdentity("notes", publishes=("note",)),
    EventIdentity("search", consumes=(Consumes("note.created", "search-note-created"),)),
)
