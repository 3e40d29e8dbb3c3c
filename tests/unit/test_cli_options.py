"""``durable spawn`` and ``durable worker`` take their flags from the option dataclasses."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime

import pytest

from durable.cli import main
from durable.cli.options import spawn_options, worker_options
from durable.cli.parser import build_parser
from durable.protocol.records import SpawnOptions
from durable.runtime.worker import WorkerOptions


def _help(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _cli_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(SpawnOptions) if f.metadata.get("cli")}


def test_every_spawn_option_with_cli_help_has_a_flag_of_its_own() -> None:
    dests = set(vars(build_parser().parse_args(["spawn", "t"])))
    fields = {f.name for f in dataclasses.fields(SpawnOptions)}
    assert _cli_fields() <= dests
    assert not (fields - _cli_fields()) & dests  # only the fields that have a cli help


def test_spawn_flags_keep_their_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", _help(capsys, "spawn")))
    assert flags == {
        "--help",
        "--dsn",
        "--log-level",
        "--log-format",
        "--params",
        "--queue",
        "--idempotency-key",
        "--max-attempts",
        "--timeout",
        "--heartbeat-timeout",
        "--priority",
        "--delay",
        "--at",
        "--tag",
        "--partition-key",
        "--concurrency-key",
        "--depends-on",
        "--on-parent-cancel",
        "--retry-on",
        "--discard-on",
    }


def test_spawn_flags_build_spawn_options() -> None:
    dependencies = [uuid.UUID(int=1), uuid.UUID(int=2)]
    args = build_parser().parse_args(
        [
            "spawn",
            "t",
            "--idempotency-key",
            "k",
            "--max-attempts",
            "7",
            "--timeout",
            "30",
            "--heartbeat-timeout",
            "5.5",
            "--priority",
            "-2",
            "--delay",
            "60",
            "--tag",
            "a",
            "--tag",
            "b",
            "--partition-key",
            "p",
            "--depends-on",
            str(dependencies[0]),
            "--depends-on",
            str(dependencies[1]),
            "--on-parent-cancel",
            "abandon",
            "--discard-on",
            "validation",
            "--discard-on",
            "exhausted",
            "--retry-on",
            "transport",
        ]
    )
    assert spawn_options(args) == SpawnOptions(
        idempotency_key="k",
        max_attempts=7,
        timeout=30.0,
        heartbeat_timeout=5.5,
        priority=-2,
        delay=60.0,
        tags=["a", "b"],
        partition_key="p",
        depends_on=dependencies,
        on_parent_cancel="abandon",
        retry_on=["transport"],
        discard_on=["validation", "exhausted"],
    )
    with pytest.raises(SystemExit):  # not a reason class
        build_parser().parse_args(["spawn", "t", "--discard-on", "ValueError"])
    at = build_parser().parse_args(["spawn", "t", "--at", "2030-01-01T09:00:00+02:00"])
    assert spawn_options(at).at == datetime(2030, 1, 1, 7, tzinfo=UTC)


def test_spawn_without_flags_takes_the_defaults_of_spawn_options() -> None:
    assert spawn_options(build_parser().parse_args(["spawn", "t"])) == SpawnOptions()


def test_worker_flags_pass_only_what_was_given() -> None:
    parser = build_parser()
    assert worker_options(parser.parse_args(["worker", "m:app"])) == {}
    args = parser.parse_args(
        ["worker", "m:app", "-q", "a", "-c", "3", "--poll-interval", "0.5", "--grace-period", "0"]
    )
    assert worker_options(args) == {"concurrency": 3, "poll_interval": 0.5, "grace_period": 0.0}


def test_worker_help_shows_the_defaults_of_worker_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(WorkerOptions)}
    text = " ".join(_help(capsys, "worker").split())  # unwrapped
    assert f"tasks run at once (default {defaults['concurrency']})" in text
    for flag, name in [
        ("--claim-timeout", "claim_timeout"),
        ("--grace-period", "grace_period"),
        ("--poll-interval", "poll_interval"),
        ("--metrics-interval", "metrics_interval"),
    ]:
        default = defaults[name]
        assert isinstance(default, float)
        assert re.search(rf"{flag} S [^-]*\(default {default:g}\)", text), flag
    assert f"(default {defaults['metrics_host']};" in text
