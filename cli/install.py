"""`python -m cli.install`: downloads everything the local stack and the tests need, once per machine
(Kafka's jars, the demo footage, the default model), into the cache directory."""
from __future__ import annotations

import sys

from libs.common.cache_dir import default_cache_dir
from cli.stack.local import install_stack


def main() -> int:
    cache = default_cache_dir()
    install_stack(cache)
    print(f"vigil: everything installed (cache {cache})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
