"""A PDU's values as SNMP objects, in the PDU MIB layout the ``snmp`` source kind documents (README).

The subtree ``PDU_ROOT`` sits under enterprise 32473 (RFC 5612's number for documentation):
``.1.1.{2,3,4,5}.<phase>`` current (0.1 A), power (W), voltage (0.1 V), overload (1 ok, 2 overload);
``.1.2.0`` total power (W); ``.2.1.{2,3}.<outlet>`` power (W), current (0.1 A);
``.3.1.2.<breaker>`` state (1 closed, 2 open); ``.5.1.2.<sensor>`` inlet temperature (0.1 degC).

The values come as ``{oid: [type, value]}``, the form an snmpd ``pass_persist`` script answers with
(type one of gauge, integer). The site twin writes one such file per PDU: outlets are the PDU's racks,
each with its own breaker and inlet sensor.

>>> v = pdu_objects(5.49, [2.0, 0.0, 3.49], [24.0, 24.0, 31.25])
>>> v[f"{PDU_ROOT}.1.2.0"], v[f"{PDU_ROOT}.1.1.3.2"], v[f"{PDU_ROOT}.2.1.2.3"]
(['gauge', 5490], ['gauge', 1830], ['gauge', 3490])
>>> v[f"{PDU_ROOT}.3.1.2.2"], v[f"{PDU_ROOT}.5.1.2.3"]
(['integer', 2], ['integer', 312])
"""

from __future__ import annotations

from typing import Sequence

PDU_ROOT = "1.3.6.1.4.1.32473.14"
PHASES = 3


def pdu_objects(total_kw: float, outlet_kw: Sequence[float], inlet_c: Sequence[float], volts: float = 230.0,
                phase_limit_kw: float | None = None) -> dict[str, list]:
    """The PDU's objects: ``total_kw`` over three balanced phases, one outlet per rack (a dark rack's breaker
    is open), one inlet sensor per rack. A phase above ``phase_limit_kw`` reads as overloaded."""
    out: dict[str, list] = {}
    phase_w = max(0.0, total_kw) * 1000 / PHASES
    for phase in range(1, PHASES + 1):
        out[f"{PDU_ROOT}.1.1.2.{phase}"] = ["gauge", round(phase_w / volts * 10)]
        out[f"{PDU_ROOT}.1.1.3.{phase}"] = ["gauge", round(phase_w)]
        out[f"{PDU_ROOT}.1.1.4.{phase}"] = ["gauge", round(volts * 10)]
        over = phase_limit_kw is not None and phase_w > phase_limit_kw * 1000
        out[f"{PDU_ROOT}.1.1.5.{phase}"] = ["integer", 2 if over else 1]
    out[f"{PDU_ROOT}.1.2.0"] = ["gauge", round(max(0.0, total_kw) * 1000)]
    for i, kw in enumerate(outlet_kw, 1):
        out[f"{PDU_ROOT}.2.1.2.{i}"] = ["gauge", round(max(0.0, kw) * 1000)]
        out[f"{PDU_ROOT}.2.1.3.{i}"] = ["gauge", round(max(0.0, kw) * 1000 / volts * 10)]
        out[f"{PDU_ROOT}.3.1.2.{i}"] = ["integer", 1 if kw > 0 else 2]
    for i, c in enumerate(inlet_c, 1):
        out[f"{PDU_ROOT}.5.1.2.{i}"] = ["integer", round(c * 10)]
    return out
