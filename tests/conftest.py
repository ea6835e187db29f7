# ---------------------------------------------------------------------------
# Kafka: a real single-node broker (scripts/kafka.sh, tests/kafka_broker.py).
#   STREAMRNN_KAFKA_BOOTSTRAP=host:port  use an external broker instead
#   STREAMRNN_REQUIRE_KAFKA=1            fail instead of skip when no broker
# ---------------------------------------------------------------------------
import os
import re
import uuid

import pytest


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """The session's local KafkaBroker, or None when STREAMRNN_KAFKA_BOOTSTRAP is set."""
    from tests.kafka_broker import KafkaBroker, kafka_skip_or_fail, missing_tools

    if os.environ.get("STREAMRNN_KAFKA_BOOTSTRAP"):
        yield None
        return
    why = missing_tools()
    if why is not None:
        kafka_skip_or_fail(f"cannot start a local Kafka broker: {why}")
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except Exception as exc:  # noqa: BLE001 - report why, skip or fail per env
        try:
            broker.stop()
        except Exception:  # noqa: BLE001
            pass
        kafka_skip_or_fail(f"could not start a local Kafka broker: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker):
    """Bootstrap address ("host:port") of a real Kafka broker for this session."""
    external = os.environ.get("STREAMRNN_KAFKA_BOOTSTRAP")
    if external:
        from tests.kafka_broker import kafka_skip_or_fail, wait_until_ready

        try:
            wait_until_ready(external, timeout_s=30)
        except TimeoutError as exc:
            kafka_skip_or_fail(f"external Kafka broker STREAMRNN_KAFKA_BOOTSTRAP={external}: {exc}")
        return external
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_bootstrap, request):
    """A fresh, uniquely named topic with 2 partitions; deleted afterwards."""
    from tests.kafka_broker import create_topic, delete_topic

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-.") or "t"
    name = f"streamrnn-test-{stem}-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, name, partitions=2)
    yield name
    try:
        delete_topic(kafka_bootstrap, name)
    except Exception:  # noqa: BLE001 - best effort (the broker may be down)
        pass
