"""Device simulator: Lektri.co chargers and meters served over real sockets for tests and load.

``device`` holds the profiles, state machine and replies; ``server`` the HTTP serving, faults,
call log and control API; ``cli`` the ``simulate`` command.
"""

from .device import (
    DEFAULT_PROFILES,
    NO_ANOMALIES,
    PROFILES,
    UNKNOWN_METHOD_ANSWERS,
    Anomalies,
    Device,
    ManualClock,
    SimClock,
    make_device,
)
from .server import (
    COMPRESSIONS,
    FAULT_MODES,
    SPELLINGS,
    CallRecord,
    ControlServer,
    DeviceSpec,
    Fault,
    SimulatedFleet,
    loopback_address,
)

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_PROFILES",
    "FAULT_MODES",
    "NO_ANOMALIES",
    "PROFILES",
    "SPELLINGS",
    "UNKNOWN_METHOD_ANSWERS",
    "Anomalies",
    "CallRecord",
    "ControlServer",
    "Device",
    "DeviceSpec",
    "Fault",
    "ManualClock",
    "SimClock",
    "SimulatedFleet",
    "loopback_address",
    "make_device",
]
