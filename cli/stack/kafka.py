"""The local stack's Kafka: Apache Kafka 4.4 from Maven Central, one KRaft process that is both broker and
controller, listening on 127.0.0.1 only. `install` fetches the jars into the cache; `spec` describes the process."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from cli.stack.component import ComponentSpec, StackPaths, port_accepts

NAME = "kafka"
KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("kafka-pom.xml")
STORAGE_TOOL = "kafka.tools.StorageTool"
BROKER_MAIN = "kafka.Kafka"
HOST = "127.0.0.1"

# Measured on a 2-core box: C1 only starts the broker ~0.4 s sooner and, with the compiler threads no longer
# competing for the cores, produced faster too; SerialGC is the leanest collector for a 512 MB heap.
JVM_FLAGS = [
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # Plain IPv4 sockets (else Java listens on [::ffff:127.0.0.1], loopback still, but confusing in `ss`).
    "-Djava.net.preferIPv4Stack=true",
]

# WARN and up to stdout (the supervisor keeps it), plus the one line that says the broker is up.
# shutdownHook="disable": Kafka logs from its own shutdown hook, after log4j's would have stopped logging.
LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="state.change.logger" level="ERROR"/>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
"""


def log(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


def libs_dir(cache: Path) -> Path:
    return cache / f"kafka-{KAFKA_VERSION}" / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


# Written last into the libs dir: jars fetched for another version of the pom do not count as installed.
STAMP = ".pom-sha256"


def installed(cache: Path) -> bool:
    stamp = libs_dir(cache) / STAMP
    return stamp.is_file() and stamp.read_text().strip() == _pom_digest()


def install(cache: Path) -> None:
    """Fetch the broker's jars (Kafka plus a log4j2 binding) into `<cache>/kafka-4.4.0/libs` with Maven.
    They land in a temporary directory that is renamed when complete, so an interrupted download is
    never mistaken for a finished one."""
    target = libs_dir(cache)
    if installed(cache):
        log(f"Kafka {KAFKA_VERSION} already in {target}")
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is not installed: it fetches Kafka's jars (Debian package `maven`)")
    _java()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=target.parent))
    try:
        log(f"downloading Kafka {KAFKA_VERSION} and its dependencies from Maven Central ...")
        _run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={partial}"])
        if not any(partial.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            raise RuntimeError(f"Maven finished but {partial} holds no kafka_2.13-{KAFKA_VERSION}.jar")
        (partial / STAMP).write_text(_pom_digest() + "\n")
        partial.chmod(0o755)
        if target.exists():
            # Jars of an older pom: swap them out in one rename, then delete them.
            stale = target.with_name(f"libs.stale-{uuid.uuid4().hex[:8]}")
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        partial.rename(target)
        log(f"Kafka {KAFKA_VERSION} installed in {target}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _run(argv: list[str]) -> None:
    """Run a tool quietly; on failure show what it said (Maven reports errors on stdout)."""
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"{Path(argv[0]).name} failed with exit code {result.returncode}: {' '.join(argv[-4:])}")


def _java(required: bool = True) -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None and required:
        raise RuntimeError("Java 17+ is not installed: Kafka 4.x needs it (Debian package `openjdk-17-jre-headless`)")
    return java or "java"


def new_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: a random UUID in URL-safe base64, never starting with '-'
    (Kafka's Uuid.randomUuid rejects those because they read as command-line flags)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(log_dir: Path, port: int, controller_port: int) -> str:
    return f"""\
# Written by cli/stack/kafka.py on every start: edit that, not this.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}

# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1

# Topics are created on purpose (the project declares them), with three partitions unless told otherwise.
auto.create.topics.enable=false
num.partitions=3
group.initial.rebalance.delay.ms=0

# Small: fewer threads, fewer internal partitions (the first consumer group creates them all), and a log
# cleaner buffer of 16 MB instead of 128 MB out of a 512 MB heap.
num.network.threads=2
num.io.threads=4
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8
log.cleaner.dedupe.buffer.size=16777216
"""


def spec(paths: StackPaths, port: int = 9092, controller_port: int = 9093) -> ComponentSpec:
    data = paths.data(NAME)
    config_dir = data / "config"
    log_dir = data / "kafka-logs"
    config_dir.mkdir(parents=True, exist_ok=True)
    properties = config_dir / "server.properties"
    log4j2 = config_dir / "log4j2.xml"
    properties.write_text(server_properties(log_dir, port, controller_port))
    log4j2.write_text(LOG4J2_XML)
    classpath = f"{libs_dir(paths.cache)}/*"
    # Describing the process needs no Java yet (`status` on a machine before `make install`); starting it does.
    jvm = [_java(required=False), *JVM_FLAGS, f"-Dlog4j2.configurationFile={log4j2}", "-cp", classpath]

    def prepare() -> None:
        if not installed(paths.cache):
            raise RuntimeError(f"Kafka's jars are not in {libs_dir(paths.cache)}: run `make install`")
        _java()
        # Formatted once; later starts keep the topics and their messages.
        if (log_dir / "meta.properties").exists():
            return
        log(f"formatting {log_dir}")
        _run([*jvm, STORAGE_TOOL, "format", "-t", new_cluster_id(), "-c", str(properties), "--standalone"])

    return ComponentSpec(
        name=NAME,
        argv=[*jvm, BROKER_MAIN, str(properties)],
        healthy=lambda: broker_answers(f"{HOST}:{port}"),
        cwd=data,
        prepare=prepare,
        start_timeout_s=60.0,
    )


def broker_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    # Without a listener librdkafka would log a connection error per attempt: ask only once the port is open.
    if not port_accepts(host, int(port)):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000, "log_level": 0})
    try:
        admin.list_topics(timeout=2)
        return True
    except Exception:  # KafkaException while the broker is still starting
        return False
