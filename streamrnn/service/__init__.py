"""The streaming daemon: source -> decode -> Model.step_many -> encode -> sink, with checkpoints.

One module per concern, in the order of the data path:

- :mod:`.config`: the declarative schema of the TOML config, its validation, ``docs/config.md``;
- :mod:`.io`: the configured source and sinks (connectors);
- :mod:`.decode`: records -> (features, target, key), or a dead letter with the reason;
- :mod:`.loop`: :class:`Daemon`, the loop: poll, decode, learn, write, checkpoint cadence, summary;
- :mod:`.single` / :mod:`.group`: the runners: one model over the whole source, or one member of
  a Kafka consumer group with a state per owned partition;
- :mod:`.checkpoints`: checkpoint generations and the fallback to the newest usable one;
- :mod:`.retry`: the retry policy while the broker is unreachable or checkpoints fail;
- :mod:`.metrics`: the Prometheus endpoint.

The configuration reference is ``docs/config.md`` (generated from :mod:`.config`).
"""

from .checkpoints import first_usable, load_checkpoint, save_checkpoint
from .config import ConfigError, dump_config, load_config, reference_markdown, validate_config
from .decode import BadRecord, Decoder
from .group import GroupDaemon
from .io import make_sink, make_source
from .loop import Daemon, run_config
from .metrics import Metrics
from .retry import RetryPolicy
from .single import SingleDaemon

__all__ = [
    "BadRecord",
    "ConfigError",
    "Daemon",
    "Decoder",
    "GroupDaemon",
    "Metrics",
    "RetryPolicy",
    "SingleDaemon",
    "dump_config",
    "first_usable",
    "load_checkpoint",
    "load_config",
    "make_sink",
    "make_source",
    "reference_markdown",
    "run_config",
    "save_checkpoint",
    "validate_config",
]
