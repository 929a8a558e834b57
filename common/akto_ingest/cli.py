"""``akto-ingest``: the operator's view of the queue and the dead-letter store.

    akto-ingest status [--json]
    akto-ingest dlq list [--limit N] [--json]
    akto-ingest dlq show ID [--json]
    akto-ingest dlq replay (--all | ID...) [--json]
    akto-ingest dlq purge (--all | ID...) [--json]
    akto-ingest violations [--limit N] [--since 1h|ISO-8601] [--json]
    akto-ingest check-config CONFIG.yaml

Reads ``REDIS_URL`` and ``AKTO_QUEUE_NAME`` like the hook and the worker (``--redis-url`` and
``--queue`` override them); a ``redis+sentinel://`` URL reaches the current primary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.constants import health_check_key_suffix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import config_check, dlq, violations
from .config import QueueSettings
from .connections import bounded, redis_client
from .errors import ConfigError, RecordError
from .queue import backlog, dlq_key, heartbeat_key, inbox_key, oldest_job_born_ms, spool_status_key
from .record import Record, now_ms

# Workers beat every 5 s; a worker unseen for a minute is gone or stuck.
STALE_MS = 60_000


async def status(redis: Redis, queue: str) -> dict[str, Any]:
    """Counts an operator needs to see whether records are flowing."""
    now = now_ms()
    waiting = await backlog(redis, queue, now)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lindex(inbox_key(queue), 0)
        pipe.hlen(dlq_key(queue))
        pipe.get(queue + health_check_key_suffix)
        pipe.hgetall(spool_status_key(queue))
        pipe.hgetall(heartbeat_key(queue))
        oldest_inbox, dead, health, spools, beats = await pipe.execute()
    oldest_job = await oldest_job_born_ms(redis, queue)
    oldest_ms = None
    if oldest_inbox:
        try:
            oldest_ms = Record.from_json(oldest_inbox).created_ms
        except RecordError:
            oldest_ms = None
    if oldest_job is not None:
        oldest_ms = oldest_job if oldest_ms is None else min(oldest_ms, oldest_job)
    return {
        "queue": queue,
        "inbox": waiting.inbox,
        "ready_jobs": waiting.ready_jobs,
        "deferred_jobs": waiting.deferred_jobs,
        "in_progress_jobs": waiting.running_jobs,
        "dead_letters": int(dead),
        "oldest_age_seconds": None if oldest_ms is None else round((now - oldest_ms) / 1000, 1),
        "arq_health_check": health.decode() if isinstance(health, bytes) else health,
        "workers": {
            k.decode(): f"seen {round((now - int(v)) / 1000)} s ago" + (" (stale)" if now - int(v) > STALE_MS else "")
            for k, v in sorted(beats.items())
        },
        "spools": {k.decode(): json.loads(v) for k, v in spools.items()},
    }


DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d)")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now: int | None = None) -> int:
    """``--since``: a duration back from now (``90s``, ``15m``, ``1h``, ``7d``) or an ISO-8601 time
    (UTC unless it names its zone), as epoch milliseconds."""
    now = now_ms() if now is None else now
    match = DURATION.fullmatch(text.strip())
    if match:
        return now - int(float(match.group(1)) * UNIT_SECONDS[match.group(2)] * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (90s, 15m, 1h, 7d) nor an ISO-8601 time (2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


async def _violations(redis: Redis, queue: str, args: argparse.Namespace) -> int:
    found = await violations.recent(redis, queue, limit=args.limit, since_ms=args.since)
    if args.json:
        _print([v.model_dump() for v in found], True)
        return 0
    print(f"{len(found)} violation(s), newest first ({await violations.count(redis, queue)} kept)")
    for v in found:
        print(
            f"{_stamp(v.time_ms)}  {v.mode:<7}  {v.call_id}  severity={v.severity or '-'}  "
            f"policy={v.policy or '-'}  rule={v.rule or '-'}  {v.path}  {v.reason[:80]}"
        )
    return 0


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    elif isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0)
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    else:
        print(data)


async def _run(args: argparse.Namespace) -> int:
    settings = QueueSettings.load({"redis_url": args.redis_url, "queue_name": args.queue})
    queue = settings.queue_name
    redis = redis_client(settings.redis_url, **bounded(settings.redis_timeout))
    try:
        if args.command == "status":
            _print(await status(redis, queue), args.json)
            return 0
        if args.command == "violations":
            return await _violations(redis, queue, args)
        if args.dlq_command == "list":
            letters = await dlq.get_many(redis, queue, await dlq.list_ids(redis, queue, limit=args.limit))
            rows = [letter.model_dump(exclude={"record"}) for letter in letters]
            if args.json:
                _print(rows, True)
            else:
                print(f"{await dlq.count(redis, queue)} dead letter(s)")
                for row in rows:
                    failed = _stamp(row["failed_ms"])
                    status_code = row["last_status"]
                    detail = row["detail"][:80]
                    print(f"{row['id']}  {failed}  {row['reason']}  status={status_code}  {detail}")
            return 0
        if args.dlq_command == "show":
            found = await dlq.get_many(redis, queue, [args.id])
            if not found:
                print(f"no dead letter with id {args.id!r}", file=sys.stderr)
                return 1
            _print(found[0].model_dump(), args.json)
            return 0
        replaying = args.dlq_command == "replay"
        if args.all:
            done = await (dlq.replay_all if replaying else dlq.purge_all)(redis, queue)
        elif args.ids:
            done = await (dlq.replay if replaying else dlq.purge)(redis, queue, list(args.ids))
        else:
            print("name dead-letter ids, or --all", file=sys.stderr)
            return 2
        verb = "replayed" if replaying else "purged"
        _print({verb: done}, args.json)
        return 0
    finally:
        await redis.aclose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="akto-ingest", description="Operate the Akto ingestion queue.")
    parser.add_argument(
        "--redis-url", help="redis:// or redis+sentinel:// URL; default: $REDIS_URL or redis://127.0.0.1:6379/0"
    )
    parser.add_argument("--queue", help="default: $AKTO_QUEUE_NAME or akto:ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    st = commands.add_parser("status", help="queue depth, retries, in-progress jobs, dead letters, spools")
    st.add_argument("--json", action="store_true")
    letters = commands.add_parser("dlq", help="the dead-letter store").add_subparsers(dest="dlq_command", required=True)
    ls = letters.add_parser("list", help="dead letters, oldest first")
    ls.add_argument("--limit", type=_positive, default=50)
    ls.add_argument("--json", action="store_true")
    show = letters.add_parser("show", help="one dead letter with its record")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    for name, what in (
        ("replay", "put records back on the queue unchanged"),
        ("purge", "delete dead letters"),
    ):
        sub = letters.add_parser(name, help=what)
        sub.add_argument("ids", nargs="*")
        sub.add_argument("--all", action="store_true")
        sub.add_argument("--json", action="store_true")
    found = commands.add_parser(
        "violations", help="requests Akto blocked or flagged, newest first, with policy, rule and severity"
    )
    found.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    found.add_argument(
        "--since", type=since_ms, help="only those recorded since: a duration back (15m, 1h, 7d) or an ISO-8601 time"
    )
    found.add_argument("--json", action="store_true")
    checked = commands.add_parser(
        "check-config", help="check a LiteLLM config.yaml's Akto guardrails before the proxy starts"
    )
    checked.add_argument("path", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            for name in config_check.check_file(args.path):
                print(f"{name}: ok")
            return 0
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"akto-ingest: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"akto-ingest: cannot reach Redis: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
