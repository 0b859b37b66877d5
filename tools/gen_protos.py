"""Regenerates the Python code for protos/*.proto beside the .proto files (package `protos`).

Run from the repository root: `python -m tools.gen_protos [--out DIR]`. The staleness test generates into a
temporary directory and compares byte for byte, so the checked-in code can never drift from the contracts."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ["protos/events.proto", "protos/inference.proto"]
# protos/inference.proto defines a service; the others are messages only.
GRPC_FILES = ["protos/inference.proto"]


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}"]
    if protoc.main(args + PROTO_FILES) != 0:
        raise RuntimeError("protoc failed on " + " ".join(PROTO_FILES))
    if protoc.main(["protoc", f"-I{ROOT}", f"-I{well_known}", f"--grpc_python_out={out}"] + GRPC_FILES) != 0:
        raise RuntimeError("protoc (grpc) failed on " + " ".join(GRPC_FILES))
    return sorted((out / "protos").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write protos/*_pb2*.py under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
