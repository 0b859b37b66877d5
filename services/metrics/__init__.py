"""The metrics sink: inference events into ClickHouse, and a read-only query API over them."""
