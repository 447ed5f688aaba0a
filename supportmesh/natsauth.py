"""Who may do what on the bus: the NATS users of the mesh and their permissions, as nats-server configuration.

One account (the global one, so monitoring and KEDA's `$G` keep working) and one user per process kind; every
permission is an allow list, so whatever is not named is refused. A user's subjects:

- gateway: publish the first step of a route and the resume of a wait it signals (run only on the message
  recorded with the wait, never on the body sent), write the saga log (`saga_started`, a signal) and the saga's state, read the
  three buckets; receive replies on `supportmesh.reply.*`; publish and receive the sessions' live events
  (`supportmesh.session.*`: an agent's reply, the close of a hand-over), between gateways only.
- every actor: fetch from its own durable consumer and ack its deliveries, publish to the actor subjects (the next
  hop), the timers of waits (`saga_timer.<prefix>.>`) and their resumes (`<prefix>._resume.*`, see saga/waits.py),
  write saga-log events. An actor that waits (`ActorSpec.waits`) also moves its sagas' state. The answering actors (response aggregator, escalation router) also write the saga
  state and the chat results and publish replies; no other actor can forge an answer or move a saga's status.
- escalation router (recovery): the dead-letter stream, reading and deleting a dead hop of the work stream.
- operator: everything (tests, benchmarks, an operator's tools); no process of the mesh runs as it.

JetStream API requests get their answers on the user's own inbox prefix (`_INBOX_<user>.>`, see
`saga.transport.connect`), so no user can read another's API answers. There is no `no_auth_user`: a connection
without credentials is refused.
"""

from __future__ import annotations

import json
from typing import Any

from actors import registry
from actors.domain import ANSWERING_ACTOR, ERROR_HANDLER, HAPPY_PATH, SUBJECT_PREFIX
from actors.results import RESULTS_BUCKET
from gateway.live import SESSION_SUBJECT_PREFIX
from saga.log import LOG_BUCKET, RUNNING_BUCKET, STATE_BUCKET
from saga.recovery import LEASE_BUCKET
from saga.transport import inbox_prefix
from saga.waits import TIMER_TOKEN, resume_subject

REPLY_SUBJECTS = "supportmesh.reply.*"
SESSION_SUBJECTS = f"{SESSION_SUBJECT_PREFIX}.*"
OPERATOR = "operator"
GATEWAY = "gateway"
# The steps a gateway starts a saga at (every route it builds begins with the happy path's first step).
FIRST_STEPS: tuple[str, ...] = (HAPPY_PATH[0],)
# The actors that answer the customer (and so write the result, the saga's final state and the reply).
ANSWERING_ACTORS: tuple[str, ...] = (ANSWERING_ACTOR, ERROR_HANDLER)
API = "$JS.API"
# The resumes of waits (saga.waits.resume_subject): published by whoever ends a wait (a signal, a timer).
RESUMES = resume_subject(SUBJECT_PREFIX, "*")
# The actors that suspend sagas (they move a saga's state to `waiting` and back).
WAITING_ACTORS: tuple[str, ...] = tuple(spec.name for spec in registry.ACTORS if spec.waits)


def _bucket_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _read_bucket(bucket: str) -> list[str]:
    """Subjects to read a KV bucket: direct gets (by key and batched), and watches (ordered consumers)."""
    stream = _bucket_stream(bucket)
    return [f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>", f"{API}.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>"]


def _write_bucket(bucket: str) -> list[str]:
    return [f"$KV.{bucket}.>"]


def _declare(streams: list[str]) -> list[str]:
    """Declaring (create-or-update) and inspecting the streams a process opens at start."""
    return [f"{API}.{verb}.{stream}" for stream in streams for verb in ("STREAM.INFO", "STREAM.CREATE", "STREAM.UPDATE")]


def _consume(stream: str, consumer: str) -> list[str]:
    """Own a durable pull consumer: create/update/inspect/recreate it, fetch from it, ack its deliveries."""
    return [f"{API}.CONSUMER.CREATE.{stream}.{consumer}", f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}", f"{API}.CONSUMER.INFO.{stream}.{consumer}",
            f"{API}.CONSUMER.DELETE.{stream}.{consumer}", f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>"]


def permissions(user: str, stream: str = "SUPPORT") -> dict[str, Any] | None:
    """The permissions of `user` (None: the operator, unrestricted)."""
    if user == OPERATOR:
        return None
    buckets = [LOG_BUCKET, STATE_BUCKET, RUNNING_BUCKET, RESULTS_BUCKET]
    # Every process declares the work stream and the stream of the timers of waits it sources from.
    publish = [f"{API}.INFO", *_declare([stream, f"{stream}_TIMERS", *map(_bucket_stream, buckets)]),
               *_write_bucket(LOG_BUCKET),
               *_read_bucket(LOG_BUCKET)]
    subscribe = [f"{inbox_prefix(user)}.>"]
    if user == GATEWAY:
        publish += [f"{SUBJECT_PREFIX}.{step}" for step in FIRST_STEPS]
        publish.append(RESUMES)  # a signal's resume: run only on the message recorded with the wait
        # The running index is read for the console's queue of sagas waiting for a colleague's approval.
        publish += [*_write_bucket(STATE_BUCKET), *_read_bucket(STATE_BUCKET), *_write_bucket(RUNNING_BUCKET),
                    *_read_bucket(RUNNING_BUCKET), *_read_bucket(RESULTS_BUCKET), SESSION_SUBJECTS]
        subscribe += [REPLY_SUBJECTS, SESSION_SUBJECTS]
        return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    publish += [f"{SUBJECT_PREFIX}.*", RESUMES, f"{TIMER_TOKEN}.{SUBJECT_PREFIX}.>", *_consume(stream, user)]
    # Who reads a saga's state reads the running index too: a saga that never changed status has its state there.
    if user in WAITING_ACTORS:
        publish += [*_write_bucket(STATE_BUCKET), *_read_bucket(STATE_BUCKET), *_read_bucket(RUNNING_BUCKET)]
    if user in ANSWERING_ACTORS:
        publish += [REPLY_SUBJECTS, *_write_bucket(STATE_BUCKET), *_read_bucket(STATE_BUCKET),
                    *_write_bucket(RUNNING_BUCKET), *_read_bucket(RUNNING_BUCKET), *_write_bucket(RESULTS_BUCKET),
                    *_read_bucket(RESULTS_BUCKET)]
    if user == ERROR_HANDLER:
        deadletters = f"{stream}_DEADLETTERS"
        # Recovery: the dead letters and its lease (the running index it sweeps it reads as an answering actor).
        publish += [*_declare([deadletters, _bucket_stream(LEASE_BUCKET)]), *_consume(deadletters, "deadletters"),
                    *_write_bucket(LEASE_BUCKET), *_read_bucket(LEASE_BUCKET),
                    f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.STREAM.MSG.DELETE.{stream}"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def authorization_config(public_keys: dict[str, str], stream: str = "SUPPORT") -> str:
    """The `authorization` block of nats.conf: one nkey user per identity, with its permissions."""
    users = []
    for user, public_key in public_keys.items():
        entry: dict[str, Any] = {"nkey": public_key}
        perms = permissions(user, stream)
        if perms is not None:
            entry["permissions"] = perms
        users.append(entry)
    # JSON is valid nats.conf; quoted strings keep `$JS...` from being read as variables.
    return "authorization {\n  users: " + json.dumps(users, indent=2) + "\n}\n"
