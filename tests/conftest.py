# ---------------------------------------------------------------------------
# Kafka: a real single-node broker (scripts/kafka.sh, tests/kafka_broker.py).
#   STREAMRNN_KAFKA_BOOTSTRAP=host:port  use an external broker instead
#   STREAMRNN_REQUIRE_KAFKA=1            fail instead of skip when no broker
# ---------------------------------------------------------------------------
import os
import re
import subprocess
import sys
import tempfile
import uuid

import pytest

# A test module that imports kafka-python (or the Kafka connectors) at its top cannot even be
# imported without it. Such a module is skipped then, or under STREAMRNN_REQUIRE_KAFKA=1 it fails:
# a run that must exercise Kafka never passes by skipping it (module-level importorskip did).
_KAFKA_IMPORT = re.compile(
    r"^(import kafka\b|from kafka\b|from streamrnn\.connectors\.kafka\b|from streamrnn\.connectors import kafka\b"
    r"|kafka = require_kafka_python\(\))",
    re.M,
)


class _NeedsKafkaPython(pytest.Module):
    """Stands in for a Kafka test module when kafka-python is missing: skipped, or failed."""

    def collect(self):
        from tests.kafka_broker import kafka_python_missing, kafka_skip_or_fail

        kafka_skip_or_fail(f"{self.path.name}: {kafka_python_missing()}")
        return []


def _needs_missing_kafka_python(path) -> bool:
    """Whether ``path`` is a Kafka test module and kafka-python is missing."""
    if path.suffix != ".py":
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    if not _KAFKA_IMPORT.search(text):
        return False
    from tests.kafka_broker import kafka_python_missing

    return kafka_python_missing() is not None


def pytest_pycollect_makemodule(module_path, parent):
    if _needs_missing_kafka_python(module_path):
        return _NeedsKafkaPython.from_parent(parent, path=module_path)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    """Without kafka-python a Kafka test module is not imported for its doctests either (that
    import error would hide the skip, or the failure, of :class:`_NeedsKafkaPython`)."""
    collected = yield
    if collected and _needs_missing_kafka_python(file_path):
        return [c for c in collected if isinstance(c, _NeedsKafkaPython)]
    return collected


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """The session's local KafkaBroker, or None when STREAMRNN_KAFKA_BOOTSTRAP is set."""
    from tests.kafka_broker import KafkaBroker, kafka_python_missing, kafka_skip_or_fail, missing_tools

    if kafka_python_missing() is not None:  # a broker without a client to reach it is of no use
        kafka_skip_or_fail(kafka_python_missing())
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


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``) every test that talks to the broker runs on one
    worker, in file order: one broker serves them, and a test that restarts it cannot disturb
    another's. The other tests are shared out by load."""
    kafka = pytest.mark.xdist_group("kafka")
    for item in items:
        if {"kafka_broker", "kafka_bootstrap"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(kafka)


def pytest_configure(config):
    """Under pytest-xdist the controller first runs the bundled demo once, so the daemon's compiled
    kernels are in Numba's disk cache before any worker starts. Two processes that compile new
    signatures of one function at once each rewrite its cache index, and one's entries are lost; a
    daemon subprocess started by a test would then compile for minutes before its first output.
    Entries written before the workers start are in every index they read, so they survive."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    with tempfile.TemporaryDirectory() as out:
        demo = subprocess.run(
            [sys.executable, "-m", "streamrnn", "demo", "--out-dir", out],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            env=dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"),
            capture_output=True,
            text=True,
        )
    if demo.returncode != 0:
        raise pytest.UsageError(f"the warm-up run of `streamrnn demo` failed:\n{demo.stderr[-3000:]}")
