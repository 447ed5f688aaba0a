"""Reading many messages of a stream without a consumer: JetStream's batched direct get.

`SagaLog.history` used to create an ephemeral consumer per read. Under load (the gateway answering
`GET /api/sagas/{id}` while actors are being killed) consumer creation is the first JetStream API call to time
out, and each one costs the server a consumer's set-up and tear-down. A batched direct get is one request per
page, answered by any server that holds the stream (`allow_direct`), with no state left behind:

    request  {"seq": 1, "next_by_subj": "<filter>", "batch": N}   to $JS.API.DIRECT.GET.<stream>
    replies  up to N messages (headers Nats-Subject, Nats-Sequence, Nats-Num-Pending), then an end-of-batch
             status message (204 EOB); 404 when nothing matches.

Needs nats-server >= 2.11 (we ship 2.15) and `allow_direct` on the stream (`ensure_direct`; `ensure_bucket`
opens or creates a KV bucket with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError

DEFAULT_BATCH = 256


class DirectGetError(Exception):
    """The server answered a direct get with a status we do not expect (neither data, end of batch, nor 404)."""


# Headers that make a KV message a marker rather than a value: a client's delete or purge (KV-Operation), or a
# marker the server placed (Nats-Marker-Reason, nats-server 2.11+).
_KV_REMOVED = frozenset({"DEL", "PURGE"})


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message read from a stream: its subject, stream sequence and body, and whether it is a KV delete or
    purge marker."""

    subject: str
    seq: int
    data: bytes
    removed: bool = False


async def read_subjects(nc: Any, stream: str, subject_filter: str, *, batch: int = DEFAULT_BATCH,
                        timeout_s: float = 5.0, api_prefix: str = "$JS.API") -> list[StoredMessage]:
    """Every message of `stream` whose subject matches `subject_filter`, in stream order.

    Raises nats' TimeoutError (or DirectGetError) when the server does not answer a page in time: the caller
    decides whether that is "unavailable" (the gateway answers 503)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[StoredMessage] = []
    next_seq = 1
    try:
        while True:
            request = {"seq": next_seq, "next_by_subj": subject_filter, "batch": batch}
            await nc.publish(f"{api_prefix}.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            pending = 0
            received = 0
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is None:
                    seq = int(headers["Nats-Sequence"])
                    removed = headers.get("KV-Operation") in _KV_REMOVED or "Nats-Marker-Reason" in headers
                    out.append(StoredMessage(headers.get("Nats-Subject", ""), seq, msg.data, removed))
                    next_seq = seq + 1
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    received += 1
                    continue
                if status == "404":  # nothing (more) matches
                    return out
                if status == "204":  # end of this batch
                    break
                raise DirectGetError(f"direct get on {stream}: {status} {headers.get('Description', '')}".strip())
            if pending == 0 or received == 0:
                return out
    finally:
        await sub.unsubscribe()


async def live_entries(nc: Any, bucket: str, *, timeout_s: float = 5.0) -> dict[str, StoredMessage]:
    """Every key of a KV bucket that has a value (not deleted or purged), with its latest message.

    nats-py's `kv.keys()` can come back empty although the bucket has keys: its watcher puts its end-of-replay
    marker before the replayed entries when they arrived before it looked (nats-io/nats.py#842; 2 listings in
    200 here). A sweep pass would then see no running saga. Reading the stream with direct gets has no such
    race, and a key rewritten during the read moves to the end of the stream, where the read still finds it."""
    prefix = f"$KV.{bucket}."
    latest: dict[str, StoredMessage] = {}
    for message in await read_subjects(nc, f"KV_{bucket}", f"{prefix}>", timeout_s=timeout_s):
        latest[message.subject[len(prefix):]] = message
    return {key: message for key, message in latest.items() if not message.removed}


async def ensure_direct(js: Any, stream: str, *, max_bytes: int | None = None, replicas: int | None = None) -> bool:
    """Turn on `allow_direct` and per-message TTLs (`allow_msg_ttl`: markers that expire) for a stream created
    without them (KV buckets created by older versions), and bring its `max_bytes` to `max_bytes` and its replicas
    to `replicas` when given (a bucket created before it had a limit, or with another one; a bucket created before
    the mesh ran on a cluster); returns True when the stream was changed."""
    info = await js.stream_info(stream)
    config = info.config
    changed = (not config.allow_direct or not config.allow_msg_ttl
               or (max_bytes is not None and (config.max_bytes or -1) != max_bytes)
               or (replicas is not None and (config.num_replicas or 1) != replicas))
    if not changed:
        return False
    config.allow_direct = True
    config.allow_msg_ttl = True
    if max_bytes is not None:
        config.max_bytes = max_bytes
    if replicas is not None:
        config.num_replicas = replicas
    await js.update_stream(config)
    return True


async def ensure_bucket(js: Any, name: str, ttl_s: float, max_bytes: int = -1, replicas: int | None = None) -> Any:
    """Open a KV bucket, creating it when missing (file storage, one value per key, retention TTL, at most
    `max_bytes` (-1 = no limit; a full bucket refuses writes), direct gets on, `replicas` copies (None: one)). A
    bucket created without direct gets (by an older version) gets them turned on, and an existing bucket gets
    the current size limit and, when `replicas` is given, that many replicas."""
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(
                KeyValueConfig(bucket=name, history=1, ttl=ttl_s, storage=StorageType.FILE, direct=True,
                               max_bytes=max_bytes, replicas=replicas or 1)
            )
        except Exception as create_error:
            # Another process created it between our two calls; else the server's refusal is the error to see
            # (e.g. "insufficient storage resources": the limits add up to more than JetStream's max_file_store).
            try:
                kv = await js.key_value(name)
            except BucketNotFoundError:
                raise create_error from None
    if await ensure_direct(js, f"KV_{name}", max_bytes=max_bytes, replicas=replicas):
        kv = await js.key_value(name)
    return kv
