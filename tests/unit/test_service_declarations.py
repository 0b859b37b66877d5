"""Every service is declared once, and what reads the declarations (the topic catalog, the local stack,
`vigil config`) finds in them what it needs."""
from pathlib import Path

import pytest

from cli.stack.local import StackPorts
from libs.common.topics import CATALOG
from services.catalog import SERVICES, service, settings_classes, topic_owners

ROOT = Path(__file__).resolve().parents[2]


def test_every_runnable_service_is_declared_and_every_declared_service_runs():
    runnable = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    assert {s.name for s in SERVICES} == runnable


def test_every_topic_of_the_catalog_has_exactly_one_owner_or_is_shared():
    owners = topic_owners()
    assert set(owners) == {spec.name for spec in CATALOG}
    assert not [topic for topic, owner in owners.items() if not owner], "topics nobody owns"


def test_a_topic_claimed_twice_is_refused(monkeypatch):
    import dataclasses

    import services.catalog as catalog
    greedy = dataclasses.replace(service("metrics"), owns_topics=(CATALOG[0].name,))
    monkeypatch.setattr(catalog, "SERVICES", (*SERVICES, dataclasses.replace(greedy, name="greedy")))
    with pytest.raises(ValueError, match="owned by both"):
        catalog.topic_owners()


def test_declared_ports_and_settings_name_real_settings_fields():
    for declaration in SERVICES:
        declaration.env_var("ops_port")
        for port in declaration.ports:
            assert declaration.env_var(port.setting).endswith("_PORT")
            declaration.env_var(port.host_setting)
        if declaration.data_volume:
            declaration.env_var(declaration.data_volume.setting)
        for setting in declaration.pod_name_settings:
            declaration.env_var(setting)


def test_an_unknown_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="no settings class of service metrics has 'nope_port'"):
        service("metrics").env_var("nope_port")


def test_port_names_are_unique_across_the_stack_and_a_test_stack_gets_each_a_free_one():
    names = [n for s in SERVICES for n in (s.ops_port_name, *(p.name for p in s.ports))]
    assert len(names) == len(set(names))
    ports = StackPorts.free()
    assert all(isinstance(getattr(ports, name), int) for name in names)


def test_the_local_stacks_default_ports_are_all_different():
    # Two services on one default port: the second of them fails to start on a fresh `make up`.
    ports = StackPorts()
    numbers = {name: getattr(ports, name) for name in ("kafka", "kafka_controller", "s3", "s3_master", "s3_volume",
                                                       "s3_filer", "rtsp", *ports.services)}
    clashes = {n: [name for name, p in numbers.items() if p == n] for n in numbers.values()}
    assert {n: names for n, names in clashes.items() if len(names) > 1} == {}


def test_a_stack_created_before_services_declared_their_ports_keeps_its_ports():
    old = {"kafka": 1, "kafka_controller": 2, "s3": 3, "s3_master": 4, "s3_volume": 5, "s3_filer": 6, "rtsp": 7,
           "grpc": 11, "query_api": 12, "ingest_ops": 13, "sensors_http": 14, "inference_ops": 15, "metrics_ops": 16}
    ports = StackPorts.from_dict(old)
    assert (ports.grpc, ports.query_api, ports.metrics_ops, ports.kafka) == (11, 12, 16, 1)


def test_vigil_config_lists_every_declared_services_settings():
    listed = {cls for _, cls in settings_classes()}
    assert all(cls in listed for s in SERVICES for _, cls in s.settings)


def test_vigil_topics_lists_each_topic_with_its_message_and_owner(capsys):
    import json

    from cli.__main__ import main

    assert main(["topics", "--json"]) == 0
    rows = {row["topic"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["vigil.frames"]["message"] == "Frame" and rows["vigil.frames"]["owner"] == "ingest"
    assert rows["vigil.datasets"]["retention"] == "forever" and rows["vigil.cameras"]["compacted"]
