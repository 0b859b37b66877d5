"""`vigil tail`: a topic's events as JSON, each decoded as the message type the topic catalog names."""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import IO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from libs.common.topics import message_type as message_type_of
from protos import events_pb2



def event_as_dict(topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> dict:
    """The event as the proto's own JSON form with its field names; frame bytes are summarised, not dumped."""
    message_type = message_type_of(topic)
    if message_type is None:  # the dead-letter topic and anything unknown: raw bytes and headers
        return {
            "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])},
            "value_base64": base64.b64encode(value[:256]).decode(),
            "value_size": len(value),
        }
    try:
        message = message_type.FromString(value)
    except DecodeError as exc:
        return {"undecodable": str(exc), "value_size": len(value)}
    as_dict = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if message_type is events_pb2.Frame and message.WhichOneof("payload") == "data":
        as_dict["data"] = f"<{len(message.data)} bytes>"
    return as_dict


def tail_topic(bootstrap: str, topic: str, count: int, from_beginning: bool, timeout_s: float, out: IO[str]) -> int:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        # A throwaway group: tail never commits and never takes partitions away from a service.
        "group.id": f"vigil-tail-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise SystemExit(f"vigil: no such topic: {topic}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in metadata.topics[topic].partitions])
        printed, deadline = 0, time.monotonic() + timeout_s
        while printed < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            if msg.error():
                raise SystemExit(f"vigil: {msg.error().str()}")
            out.write(json.dumps(event_as_dict(topic, msg.value() or b"", msg.headers())) + "\n")
            out.flush()
            printed += 1
        return printed
    finally:
        consumer.close()
