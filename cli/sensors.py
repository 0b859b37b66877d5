"""`vigil sensors add | remove | list`: the sensor registry, a compacted Kafka topic keyed by sensor id.

  vigil sensors add ID --quantity Q --unit U [--min X] [--max Y] [--description D]   (add or replace)
  vigil sensors remove ID                                                              (a tombstone)
  vigil sensors list [--json]

Ingest replicas follow the topic and apply a change within seconds, without a restart."""
from __future__ import annotations

import argparse
import getpass
import json
import math
import sys
import time

from google.protobuf.json_format import MessageToDict

from libs.common.compacted import CompactedTable, TableWriteFailed
from libs.common.envelope import timestamp_from_ns
from libs.common.logs import configure_logging
from libs.common.settings import KafkaSettings
from libs.common.topics import CATALOG, SENSORS_REGISTRY, ensure_topics
from protos import events_pb2
from services.ingest.sensors.sensor_registry import sensor_registry_table
from services.ingest.sensors.validation import definition_problem


def _kafka(stack, args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=args.bootstrap or stack.config.kafka_bootstrap)


def _table(kafka: KafkaSettings) -> CompactedTable[events_pb2.SensorDefinition]:
    return sensor_registry_table(kafka.client_config(), "vigil-cli")


def _write(kafka: KafkaSettings, sensor_id: str, definition: events_pb2.SensorDefinition | None) -> None:
    ensure_topics(kafka.client_config(), kafka.replication_factor,
                  tuple(s for s in CATALOG if s.name == SENSORS_REGISTRY))
    table = _table(kafka)
    try:
        if definition is None:
            table.delete(sensor_id)
        else:
            table.put(sensor_id, definition)
    except TableWriteFailed as exc:
        raise SystemExit(f"vigil: the registry did not take the change: {exc}") from exc


def cmd_add(stack, args: argparse.Namespace) -> int:
    definition = events_pb2.SensorDefinition(
        sensor_id=args.sensor_id, quantity=args.quantity, unit=args.unit, description=args.description,
        updated_time=timestamp_from_ns(time.time_ns()), updated_by=f"cli/{getpass.getuser()}",
    )
    if args.min is not None:
        definition.min_value = args.min
    if args.max is not None:
        definition.max_value = args.max
    problem = definition_problem(definition)
    if problem:
        print(f"vigil: not a usable sensor definition: {problem}", file=sys.stderr)
        return 2
    _write(_kafka(stack, args), args.sensor_id, definition)
    print(f"sensor {args.sensor_id} registered")
    return 0


def cmd_remove(stack, args: argparse.Namespace) -> int:
    kafka = _kafka(stack, args)
    if args.sensor_id not in _table(kafka).snapshot():
        print(f"vigil: no sensor {args.sensor_id!r} in the registry", file=sys.stderr)
        return 1
    _write(kafka, args.sensor_id, None)
    print(f"sensor {args.sensor_id} removed")
    return 0


def cmd_list(stack, args: argparse.Namespace) -> int:
    definitions = _table(_kafka(stack, args)).snapshot()
    if args.json:
        for sensor_id in sorted(definitions):
            print(json.dumps(MessageToDict(definitions[sensor_id], preserving_proto_field_name=True)))
        return 0
    print(f"{'sensor':<24} {'quantity':<16} {'unit':<8} {'min':>10} {'max':>10}  description")
    for sensor_id in sorted(definitions):
        d = definitions[sensor_id]
        low = f"{d.min_value:g}" if d.HasField("min_value") else "-"
        high = f"{d.max_value:g}" if d.HasField("max_value") else "-"
        print(f"{sensor_id:<24} {d.quantity:<16} {d.unit:<8} {low:>10} {high:>10}  {d.description}")
    return 0


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def register(subparsers: argparse._SubParsersAction) -> dict:
    sensors = subparsers.add_parser("sensors", help="the sensor registry: add, remove, list sensor definitions",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sensors.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local stack's)")
    sub = sensors.add_subparsers(dest="sensors_command", required=True)
    add = sub.add_parser("add", help="add a sensor, or replace its definition")
    add.add_argument("sensor_id")
    add.add_argument("--quantity", required=True, help='what it measures, e.g. "temperature"')
    add.add_argument("--unit", required=True, help='the one spelling readings must use, e.g. "°C"')
    add.add_argument("--min", type=_finite, help="lowest possible value (default: unbounded)")
    add.add_argument("--max", type=_finite, help="highest possible value (default: unbounded)")
    add.add_argument("--description", default="")
    remove = sub.add_parser("remove", help="remove a sensor: its readings are rejected from then on")
    remove.add_argument("sensor_id")
    listing = sub.add_parser("list", help="the registry as it is now")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    commands = {"add": cmd_add, "remove": cmd_remove, "list": cmd_list}

    def cmd_sensors(stack, args: argparse.Namespace) -> int:
        # The registry reader logs like a service does; here only problems, and on stderr, never in the output.
        configure_logging("cli", "WARNING")
        return commands[args.sensors_command](stack, args)

    return {"sensors": cmd_sensors}
