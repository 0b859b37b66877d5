"""`vigil cameras add|update|remove|list`: the camera registry (topic vigil.cameras)."""
from __future__ import annotations

import argparse
import json
import sys

from google.protobuf.json_format import MessageToDict

from libs.common.logs import redact_credentials
from libs.common.settings import KafkaSettings
from protos import events_pb2
from services.ingest.camera_spec import InvalidCameraConfig
from services.ingest.camera_registry import CameraRegistryClient


def _registry(stack) -> CameraRegistryClient:
    return CameraRegistryClient(KafkaSettings(bootstrap_servers=stack.config.kafka_bootstrap))


def _region(text: str) -> events_pb2.Region:
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a region is x1,y1,x2,y2 (fractions of the frame), got {text!r}") from None
    return events_pb2.Region(x1=x1, y1=y1, x2=x2, y2=y2)


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fps", type=float, help="frames per second produced (default: the service's, 5)")
    parser.add_argument("--max-width", type=int, help="downscale frames wider than this")
    parser.add_argument("--max-height", type=int, help="downscale frames taller than this")
    parser.add_argument("--jpeg-quality", type=int, help="10..100 (default: the service's, 85)")
    parser.add_argument("--loop", action="store_true", default=None, help="files: start again at the end")
    parser.add_argument("--unpaced", action="store_true", default=None, help="files: read as fast as possible")
    parser.add_argument("--roi", type=_region, action="append", help="keep only this region: x1,y1,x2,y2 (repeatable)")
    parser.add_argument("--motion", type=float, help="skip frames with less than this fraction of pixels changed")
    parser.add_argument("--stall-timeout", type=float, help="seconds without a frame before the stream is reopened")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")


def _apply_options(config: events_pb2.CameraConfig, args: argparse.Namespace) -> None:
    simple = {"fps": "sample_fps", "max_width": "max_width", "max_height": "max_height",
              "jpeg_quality": "jpeg_quality", "loop": "loop", "unpaced": "unpaced",
              "motion": "motion_min_changed_fraction", "stall_timeout": "stall_timeout_s"}
    for arg, field in simple.items():
        if getattr(args, arg) is not None:
            setattr(config, field, getattr(args, arg))
    if args.roi:
        del config.roi[:]
        config.roi.extend(args.roi)
    for label in args.label:
        key, _, value = label.partition("=")
        config.labels[key] = value


def cmd_add(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack)
    existing = registry.list().get(args.camera_id)
    if args.command == "cameras-add" and existing is not None:
        print(f"vigil: camera {args.camera_id} exists; use `vigil cameras update`", file=sys.stderr)
        return 2
    if args.command == "cameras-update" and existing is None:
        print(f"vigil: no camera {args.camera_id}; use `vigil cameras add`", file=sys.stderr)
        return 2
    config = existing or events_pb2.CameraConfig(camera_id=args.camera_id)
    if getattr(args, "url", None):
        config.url = args.url
    _apply_options(config, args)
    try:
        registry.put(config)
    except InvalidCameraConfig as exc:
        print(f"vigil: invalid camera config: {exc}", file=sys.stderr)
        return 2
    print(_shown(config))
    return 0


def _shown(config: events_pb2.CameraConfig) -> str:
    """A camera as printed: its URL without credentials (terminal output ends up in scrollback, CI logs, tickets)."""
    shown = events_pb2.CameraConfig()
    shown.CopyFrom(config)
    shown.url = redact_credentials(config.url)
    return json.dumps(MessageToDict(shown, preserving_proto_field_name=True))


def cmd_remove(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack)
    if args.camera_id not in registry.list():
        print(f"vigil: no camera {args.camera_id}", file=sys.stderr)
        return 2
    registry.remove(args.camera_id)
    return 0


def cmd_list(stack, _args: argparse.Namespace) -> int:
    for config in _registry(stack).list().values():
        print(_shown(config))
    return 0


def register(sub: argparse._SubParsersAction) -> dict:
    cameras = sub.add_parser("cameras", help="the camera registry: add, update, remove, list")
    actions = cameras.add_subparsers(dest="command_action", required=True)
    add = actions.add_parser("add", help="add a camera (takes effect within seconds)")
    add.add_argument("camera_id")
    add.add_argument("url", help="rtsp://..., http(s)://... (MJPEG), a video file, or /dev/videoN")
    _config_options(add)
    update = actions.add_parser("update", help="change a camera's config")
    update.add_argument("camera_id")
    update.add_argument("--url")
    _config_options(update)
    remove = actions.add_parser("remove", help="remove a camera (its frames stop within seconds)")
    remove.add_argument("camera_id")
    actions.add_parser("list", help="the registry as JSON lines")
    for name, parser in (("add", add), ("update", update), ("remove", remove), ("list", actions.choices["list"])):
        parser.set_defaults(command=f"cameras-{name}")
    return {"cameras-add": cmd_add, "cameras-update": cmd_add, "cameras-remove": cmd_remove, "cameras-list": cmd_list}
