"""A real single-node Kafka broker for tests, driven through scripts/kafka.sh.

    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()                 # fetches jars once, starts, waits until it answers
    broker.create_topic("t", partitions=2)
    ...
    broker.restart()               # same ports, same data: nothing is lost
    broker.stop()

Environment (see also scripts/kafka.sh):
    STREAMRNN_KAFKA_BOOTSTRAP   use this external broker instead of starting one
    STREAMRNN_REQUIRE_KAFKA=1   fail (instead of skip) when no broker can be had
    STREAMRNN_KAFKA_CACHE       where the broker jars are cached
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"
KAFKA_VERSION = "4.1.1"

# Generous: the first start downloads ~43 MB of jars through Maven.
START_TIMEOUT_S = float(os.environ.get("STREAMRNN_KAFKA_START_TIMEOUT_S", "600"))
READY_TIMEOUT_S = 60.0


def kafka_skip_or_fail(reason: str):
    """Skip the test for want of a broker, or fail if STREAMRNN_REQUIRE_KAFKA=1."""
    if os.environ.get("STREAMRNN_REQUIRE_KAFKA") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def kafka_python_missing() -> str | None:
    """Why kafka-python cannot be imported, or None if it can."""
    try:
        import kafka  # noqa: F401
    except ImportError as exc:
        return f"kafka-python is not installed ({exc}): pip install 'streamrnn[kafka]'"
    return None


def require_kafka_python():
    """The ``kafka`` module, or (at module level too) a skip, or a failure under
    STREAMRNN_REQUIRE_KAFKA=1: what ``pytest.importorskip("kafka")`` does, minus ignoring the flag."""
    why = kafka_python_missing()
    if why is not None:
        if os.environ.get("STREAMRNN_REQUIRE_KAFKA") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why, allow_module_level=True)
    import kafka

    return kafka


def kafka_cache_dir() -> Path:
    default = Path.home() / ".cache" / "streamrnn" / f"kafka-{KAFKA_VERSION}"
    return Path(os.environ.get("STREAMRNN_KAFKA_CACHE", str(default)))


def jars_cached() -> bool:
    cache = kafka_cache_dir()
    return (cache / f".fetched-kafka_2.13-{KAFKA_VERSION}").is_file() and (
        cache / "libs" / f"kafka_2.13-{KAFKA_VERSION}.jar"
    ).is_file()


def missing_tools() -> str | None:
    """Why a local broker cannot be started here, or None if it can."""
    if shutil.which("java") is None:
        return "no 'java' on PATH: a Java 17+ runtime is needed to run a local Kafka broker"
    if shutil.which("mvn") is None and not jars_cached():
        return (
            "no 'mvn' on PATH and the Kafka jars are not cached in "
            f"{kafka_cache_dir()}: Maven is needed once to fetch the broker"
        )
    if shutil.which("bash") is None:
        return "no 'bash' on PATH: scripts/kafka.sh needs it"
    return None


def admin_client(bootstrap: str, **kwargs):
    from kafka import KafkaAdminClient

    kwargs.setdefault("client_id", "streamrnn-tests-admin")
    kwargs.setdefault("request_timeout_ms", 30000)
    return KafkaAdminClient(bootstrap_servers=bootstrap, **kwargs)


def wait_until_ready(bootstrap: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll until an admin client connected to `bootstrap` answers list_topics()."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        admin = None
        try:
            admin = admin_client(bootstrap, request_timeout_ms=5000)
            admin.list_topics()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_exc = exc
            time.sleep(0.5)
        finally:
            if admin is not None:
                try:
                    admin.close()
                except Exception:  # noqa: BLE001
                    pass
    raise TimeoutError(f"Kafka broker at {bootstrap} did not answer within {timeout_s:.0f}s: {last_exc!r}")


def create_topic(bootstrap: str, name: str, partitions: int = 1, configs: dict | None = None) -> None:
    """Create a topic (replication factor 1) and wait until every partition has a leader."""
    spec = {"num_partitions": partitions, "replication_factor": 1}
    if configs:
        spec["configs"] = {k: str(v) for k, v in configs.items()}
    admin = admin_client(bootstrap)
    try:
        admin.create_topics({name: spec}, wait_for_metadata=True)
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str, missing_ok: bool = True) -> None:
    from kafka.errors import UnknownTopicOrPartitionError

    admin = admin_client(bootstrap)
    try:
        admin.delete_topics([name])
    except UnknownTopicOrPartitionError:
        if not missing_ok:
            raise
    finally:
        admin.close()


class KafkaBroker:
    """One broker process whose files (properties, data, log, pid) live in `workdir`."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir).resolve()
        self._bootstrap: str | None = None
        self._running = False
        atexit.register(self._stop_quietly)

    # -- lifecycle ---------------------------------------------------------
    def _run_script(self, *args: str, timeout: float) -> str:
        try:
            proc = subprocess.run(
                ["bash", str(KAFKA_SH), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"scripts/kafka.sh {' '.join(args)} timed out after {timeout:.0f}s\nstderr:\n{exc.stderr or ''}"
            ) from None
        if proc.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka.sh {' '.join(args)} failed (exit {proc.returncode})\nstderr:\n{proc.stderr}"
            )
        return proc.stdout

    def start(self) -> str:
        """Start (or, if the workdir was used before, restart) the broker; return bootstrap."""
        if self._running:
            raise RuntimeError(f"broker in {self.workdir} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = self._run_script("start", str(self.workdir), timeout=START_TIMEOUT_S)
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if not lines:
            raise RuntimeError("scripts/kafka.sh start printed no bootstrap address")
        bootstrap = lines[-1]
        if self._bootstrap is not None and bootstrap != self._bootstrap:
            raise RuntimeError(f"broker came back on {bootstrap}, expected the old address {self._bootstrap}")
        self._bootstrap = bootstrap
        self._running = True
        try:
            wait_until_ready(bootstrap)
        except TimeoutError as exc:
            log_tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{exc}\n---- broker.log (tail) ----\n{log_tail}") from None
        return bootstrap

    def stop(self) -> None:
        """Stop the broker (TERM, then KILL after a timeout) and wait until it is gone."""
        if (self.workdir / "broker.pid").exists():
            self._run_script("stop", str(self.workdir), timeout=120)
        self._running = False

    def restart(self) -> str:
        """Stop, then start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """Crash the broker: SIGKILL, no controlled shutdown; ``start()`` brings it back on the
        same ports with the same data (Kafka recovers its logs)."""
        import signal

        pid_file = self.workdir / "broker.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                try:  # reap it if it is our child (else it stays a zombie until the session ends)
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                state = ""
                try:
                    state = Path(f"/proc/{pid}/stat").read_text().split()[2]
                except (OSError, IndexError):
                    pass
                if state in ("Z", "X"):
                    break
                time.sleep(0.05)
            pid_file.unlink(missing_ok=True)
        self._running = False

    def _stop_quietly(self) -> None:
        try:
            if self._running:
                self.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- info --------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        if self._bootstrap is None:
            raise RuntimeError("broker has not been started")
        return self._bootstrap

    @property
    def running(self) -> bool:
        return self._running

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker.log)"

    # -- topics ------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, configs: dict | None = None) -> str:
        create_topic(self.bootstrap, name, partitions, configs)
        return name

    def delete_topic(self, name: str, missing_ok: bool = True) -> None:
        delete_topic(self.bootstrap, name, missing_ok=missing_ok)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"KafkaBroker({str(self.workdir)!r}, bootstrap={self._bootstrap!r}, {state})"
