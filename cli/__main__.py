"""`vigil`: run the local stack and look inside it.

  vigil up | down | status [--json]      the local stack (state in $VIGIL_STATE_DIR, default .state/)
  vigil tail TOPIC [--count N] [--from-beginning]
  vigil query SQL                        read-only SQL against the metrics store (sends $VIGIL_METRICS_API_TOKEN)
  vigil query --named NAME [--param k=v]  a named query of the metrics store
  vigil config                           every setting, its variable and default
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cli.events import tail_topic
from cli.stack.local import LocalStack


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_up(stack: LocalStack, _args: argparse.Namespace) -> int:
    _progress(f"vigil: installing what is missing (cache {stack.paths.cache})")
    stack.install()
    _progress(f"vigil: starting the stack (state {stack.paths.state})")
    try:
        stack.up(progress=_progress)
    except (RuntimeError, TimeoutError) as exc:
        _progress(f"vigil: start failed: {exc}")
        _progress("vigil: stopping what was started")
        stack.supervisor.down(progress=_progress)
        return 1
    print("Vigil is up. Where to look:")
    for what, where in stack.where_to_look():
        print(f"  {what:<22} {where}")
    print("Try: .venv/bin/vigil tail vigil.inference --count 5")
    print('     .venv/bin/vigil query "SELECT count() FROM inference_events"')
    return 0


def cmd_down(stack: LocalStack, _args: argparse.Namespace) -> int:
    stack.supervisor.down(progress=_progress)
    return 0


def cmd_status(stack: LocalStack, args: argparse.Namespace) -> int:
    statuses = stack.supervisor.status()
    if args.json:
        print(json.dumps({
            "state_dir": str(stack.paths.state),
            "components": [s.__dict__ for s in statuses],
            "endpoints": dict(stack.where_to_look()),
        }, indent=2))
    else:
        for s in statuses:
            state = "healthy" if s.healthy else ("running, not healthy" if s.running else "stopped")
            print(f"{s.name:<12} {state:<22} {'pid ' + str(s.pid) if s.pid else ''}")
        for what, where in stack.where_to_look():
            print(f"  {what:<22} {where}")
    return 0 if all(s.healthy for s in statuses) else 3


def cmd_tail(stack: LocalStack, args: argparse.Namespace) -> int:
    count = tail_topic(stack.config.kafka_bootstrap, args.topic, args.count, args.from_beginning, args.timeout,
                       out=sys.stdout)
    if count < args.count:
        _progress(f"vigil: {count} of {args.count} events within {args.timeout:.0f}s")
        return 4
    return 0


def cmd_query(stack: LocalStack, args: argparse.Namespace) -> int:
    if bool(args.sql) == bool(args.named):
        _progress("vigil: give either SQL or --named NAME (see GET /api/named for the names)")
        return 2
    try:
        parameters = dict(p.split("=", 1) for p in args.param)
    except ValueError:
        _progress("vigil: --param takes name=value")
        return 2
    body = {"named": args.named, "parameters": parameters} if args.named else {"sql": args.sql}
    headers = {"Content-Type": "application/json"}
    # The query API's token, when the metrics service has one (the same variable it reads).
    if token := os.environ.get("VIGIL_METRICS_API_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{stack.config.query_api_url}/api/query", data=json.dumps(body).encode(), headers=headers, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = " (set VIGIL_METRICS_API_TOKEN to the metrics service's token)" if exc.code == 401 else ""
        _progress(f"vigil: query failed: {json.loads(exc.read() or b'{}').get('error', exc.reason)}{hint}")
        return 2
    except urllib.error.URLError as exc:
        _progress(f"vigil: the metrics service does not answer at {stack.config.query_api_url} ({exc.reason}); "
                  "is the stack up? (make up)")
        return 2
    for row in payload["rows"]:
        print(json.dumps(dict(zip(payload["columns"], row))))
    if not payload["rows"]:
        # Said on stderr: stdout stays JSON lines only (none), for whatever reads it.
        _progress(f"vigil: no rows (columns: {', '.join(payload['columns'])})")
    return 0


def cmd_config(_stack: LocalStack | None, _args: argparse.Namespace) -> int:
    from cli.settings_reference import settings_reference_markdown
    print(settings_reference_markdown())
    return 0


def _retention(retention_ms: int) -> str:
    if retention_ms < 0:
        return "forever"
    hours = retention_ms / 3_600_000
    return f"{hours / 24:g} d" if hours >= 24 else f"{hours:g} h"


def cmd_topics(_stack: LocalStack | None, args: argparse.Namespace) -> int:
    """The topic catalog: each topic's partitions, retention, message type and owning service."""
    from libs.common.topics import CATALOG
    from services.catalog import topic_owners

    owners = topic_owners()
    rows = [{"topic": spec.name, "partitions": spec.partitions,
             "retention": _retention(spec.retention_ms),
             "compacted": spec.config.get("cleanup.policy") == "compact",
             "message": spec.message.DESCRIPTOR.name if spec.message else "(any: original bytes)",
             "owner": owners[spec.name]} for spec in CATALOG]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{'topic':<25}{'partitions':>10}  {'retention':<11}{'message':<22}owner")
        for r in rows:
            retention = "compacted" if r["compacted"] else r["retention"]
            print(f"{r['topic']:<25}{r['partitions']:>10}  {retention:<11}{r['message']:<22}{r['owner']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, help="the stack's state directory (default $VIGIL_STATE_DIR or .state/)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install what is missing, start everything, wait until healthy")
    sub.add_parser("down", help="stop everything `up` started")
    status = sub.add_parser("status", help="health of each component")
    status.add_argument("--json", action="store_true")
    tail = sub.add_parser("tail", help="print the next events of a topic as JSON lines")
    tail.add_argument("topic")
    tail.add_argument("--count", type=int, default=10)
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    query = sub.add_parser("query", help="run read-only SQL on the metrics store, print JSON rows")
    query.add_argument("sql", nargs="?")
    query.add_argument("--named", help="a named query instead of SQL, e.g. fps_per_camera, latency_quantiles")
    query.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="a parameter of the named query (repeatable), e.g. since=2026-01-01T00:00:00")
    sub.add_parser("config", help="print the configuration reference (Markdown)")
    topics = sub.add_parser("topics", help="the topic catalog: partitions, retention, message type, owner")
    topics.add_argument("--json", action="store_true", help="one JSON object per topic")
    _register_command_modules(sub)
    return parser


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "tail": cmd_tail, "query": cmd_query,
            "config": cmd_config, "topics": cmd_topics}

# Command groups that live in modules of their own (e.g. `vigil cameras ...`, `vigil models ...`). Each
# module has `register(subparsers) -> dict[str, Callable[[LocalStack, argparse.Namespace], int]]`.
COMMAND_MODULES: list[str] = ["cli.cameras", "cli.sensors", "cli.models", "cli.drift", "cli.annotations",
                              "cli.datasets", "cli.train", "cli.demo.loop"]


def _register_command_modules(sub: argparse._SubParsersAction) -> None:
    import importlib
    for name in COMMAND_MODULES:
        COMMANDS.update(importlib.import_module(name).register(sub))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # config and topics print the code's own catalogs: no stack needed.
        stack = None if args.command in ("config", "topics") else LocalStack(state=args.state_dir)
        return COMMANDS[args.command](stack, args)
    except BrokenPipeError:  # `vigil tail ... | head`: the reader has had enough
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
