"""docs/config.md is generated from the daemon's config schema: the committed file must not drift."""

import pathlib

from streamrnn.service import validate_config
from streamrnn.service.config import SCHEMA, reference_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_committed_reference_equals_the_generated_one():
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        'docs/config.md differs from the schema; regenerate it: python -c "import streamrnn.service.config '
        "as c; print(c.reference_markdown(), end='')\" > docs/config.md"
    )


def test_reference_names_every_section_and_key():
    text = reference_markdown()
    for section in SCHEMA:
        assert f"## [{section.name}]" in text
        for key in section.keys:
            assert f"| `{key.name}` |" in text, f"{section.name}.{key.name}"


def test_filled_defaults_are_the_schema_defaults():
    cfg = validate_config(
        {
            "source": {"type": "kafka", "bootstrap": "h:1", "topic": "t"},
            "sink": {"type": "kafka", "bootstrap": "h:1", "topic": "o"},
            "schema": {"features": ["a"]},
            "checkpoint": {"path": "/tmp/x"},
            "group": {},
        }
    )
    for section in SCHEMA:
        for key in section.keys:
            if key.fill:
                assert cfg[section.name][key.name] == key.default, f"{section.name}.{key.name}"


def test_the_metrics_reference_lists_every_metric_the_daemon_serves():
    """docs/daemon.md holds the generated table of every metric, and the table names what the daemon's
    registry serves (each metric created from the same list)."""
    import pathlib

    from streamrnn.service.metrics import METRICS, metrics_markdown

    page = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "daemon.md").read_text(encoding="utf-8")
    assert metrics_markdown() in page
    assert len({name for _, _, name, _ in METRICS}) == len(METRICS) == 12
