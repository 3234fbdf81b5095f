"""The shop's way onto its event bus: `mesh.events.service.bus_access` with the shop's
domains (`services.common.event_types.EVENTS`) and its services' NATS identities
(`services.common.event_identities`, the table mesh.toml names). The publisher and the
subscribers themselves are the mesh's (`mesh.events.service`)."""

from __future__ import annotations

from mesh.events.service import BusAccess
from mesh.events.service import bus_access as mesh_bus_access
from mesh.settings import Settings
from services.common.event_identities import IDENTITIES
from services.common.event_types import EVENTS


def bus_access(settings: Settings) -> BusAccess:
    """The shop service's access: its identity's credentials, the shop's streams within
    the settings' limits, and only its own to declare."""
    return mesh_bus_access(settings, EVENTS.domains, IDENTITIES)
