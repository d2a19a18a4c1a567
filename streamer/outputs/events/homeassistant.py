"""Home Assistant MQTT discovery: the retained configs that make each source a device in Home Assistant.

Follows Home Assistant's MQTT discovery documentation (https://www.home-assistant.io/integrations/mqtt/,
"MQTT Discovery"): one retained JSON config per entity on
`DISCOVERY_PREFIX/COMPONENT/NODE_ID/OBJECT_ID/config` (ids: letters, digits, `_`, `-`), each with a
`unique_id` (so it can be renamed in Home Assistant), a `device` whose `identifiers` group a source's
entities, a `state_topic` and `value_template` that read the value from a topic streamer publishes, and
the daemon's `availability_topic` (`online` / `offline`). Per source:

- a sensor per category (`objects_total`: distinct tracked objects seen), `state_class: total_increasing`;
- two sensors per line (`in`, `out`: crossings of every category), `total_increasing`;
- a sensor per zone (entries of every category), `total_increasing`;
- a binary sensor per zone, `device_class: occupancy`: ON while a track is inside.

Counts are read from the retained `PREFIX/SOURCE/counts` (the `counts` event), occupancy from the
retained `PREFIX/SOURCE/occupancy/ZONE` (a plain number, from the zone entries' and exits' `occupancy`).
Pure: it only builds (topic, payload) pairs; mqtt.MqttSink publishes them.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MANUFACTURER = "streamer"
MODEL = "streamer camera source"


@dataclass(frozen=True)
class SourceLayout:
    """What discovery needs of a source: its id, its lines' and zones' names and the categories it counts."""

    source_id: str
    lines: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()


def slug(text: str) -> str:
    """`text` as a discovery id ([a-zA-Z0-9_-]); a changed name gets a short hash, so two names never meet."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return cleaned if cleaned == text else f"{cleaned}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def occupancy_topic(topic_prefix: str, source_id: str, zone: str) -> str:
    return f"{topic_prefix}/{source_id}/occupancy/{zone}"


def configs(discovery_prefix: str, topic_prefix: str, client_id: str, layout: SourceLayout,
            version: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The discovery (topic, config) pairs of one source; publish each retained (an empty retained
    payload on the same topic removes the entity)."""
    node = slug(f"{client_id}_{layout.source_id}")
    counts = f"{topic_prefix}/{layout.source_id}/counts"
    device = {"identifiers": [node], "name": layout.source_id, "manufacturer": MANUFACTURER, "model": MODEL}
    if version:
        device["sw_version"] = version
    common = {"availability_topic": f"{topic_prefix}/availability", "payload_available": "online", "payload_not_available": "offline",
              "device": device, "origin": {"name": MANUFACTURER}}
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, what: str, name: str, fields: dict[str, Any]) -> None:
        object_id = slug(what)
        out.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config",
                    {"name": name, "unique_id": f"{node}_{object_id}", **fields, **common}))

    def total(template: str) -> dict[str, Any]:
        return {"state_topic": counts, "value_template": template, "state_class": "total_increasing"}

    for category in layout.categories:
        add("sensor", f"objects_{category}", f"{category} seen",
            {**total(f"{{{{ value_json.objects_total.get({json.dumps(category)}, 0) }}}}"), "icon": "mdi:counter"})
    for line in layout.lines:
        for direction in ("in", "out"):
            add("sensor", f"line_{line}_{direction}", f"{line} {direction}",
                {**total(f"{{{{ (value_json.lines.get({json.dumps(line)}) or {{}}).values() | sum(attribute={json.dumps(direction)}) }}}}"),
                 "icon": "mdi:transit-connection-horizontal"})
    for zone in layout.zones:
        add("sensor", f"zone_{zone}_entries", f"{zone} entries",
            {**total(f"{{{{ (value_json.zones.get({json.dumps(zone)}) or {{}}).values() | sum }}}}"), "icon": "mdi:vector-square"})
        add("binary_sensor", f"zone_{zone}_occupied", f"{zone} occupied",
            {"state_topic": occupancy_topic(topic_prefix, layout.source_id, zone),
             "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}", "payload_on": "ON", "payload_off": "OFF",
             "device_class": "occupancy"})
    return out


def all_configs(discovery_prefix: str, topic_prefix: str, client_id: str, layouts: Sequence[SourceLayout],
                version: str = "") -> list[tuple[str, dict[str, Any]]]:
    return [pair for layout in layouts for pair in configs(discovery_prefix, topic_prefix, client_id, layout, version)]
