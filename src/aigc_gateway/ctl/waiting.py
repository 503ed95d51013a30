"""Waiting for an instance to reach a state, with live progress from WatchInstance.

`settle` is the decision alone (which event ends the wait, and how), fed any
iterable of InstanceEvents; `wait_for` connects it to the stream, the deadline
and the display.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from ..api.v1 import instance_pb2
from .client import Client
from .exitcodes import CallFailed, Exit, Failure
from .render import console

State = instance_pb2.Instance.State
GONE = -1  # the wait target of an uninstall: the instance no longer exists


@dataclass
class Outcome:
    done: bool  # reached the target
    instance: instance_pb2.Instance | None
    reason: str = ""  # why not, when not done


def state_name(state: int) -> str:
    return "GONE" if state == GONE else State.Name(State.ValueType(state))


def settle(events: Iterable[instance_pb2.InstanceEvent], target: int, *, first: instance_pb2.Instance | None = None,
           require_change: bool = False,
           on_event: Callable[[instance_pb2.InstanceEvent], None] = lambda e: None) -> Outcome:
    """Consume events until the instance is in `target`. CRASHED ends a wait for RUNNING
    (the engine keeps failing; an admin must look). With `require_change` (restart) a
    RUNNING seen before any other state is the old pod and does not count."""
    changed = first is not None and first.state not in (target, State.STATE_UNSPECIFIED)
    last = first
    for event in events:
        on_event(event)
        last = event.instance
        state = event.instance.state
        if target == GONE:
            continue
        if state == target and (changed or not require_change):
            return Outcome(True, last)
        if state != target:
            changed = True
        if state == State.CRASHED and target == State.RUNNING:
            return Outcome(False, last, f"the instance crashed: {event.message or last.state_message}")
    if target == GONE:
        return Outcome(True, last)
    return Outcome(False, last, "the watch ended before the instance reached " + state_name(target))


def wait_for(client: Client, name: str, target: int, *, timeout: float, first: instance_pb2.Instance | None,
             require_change: bool = False, live: bool = True) -> instance_pb2.Instance | None:
    """Watch `name` until `target`; raise Failure(TIMEOUT|CHECK_FAILED) otherwise."""
    if first is not None and first.state == target and not require_change:
        return first
    err = console(stderr=True)
    started = time.monotonic()
    stream = client.stream("instance", "WatchInstance", instance_pb2.WatchInstanceRequest(name=name), timeout=timeout)
    spinner = err.status(f"waiting for {name} to be {state_name(target)}") if live and err.is_terminal else None
    seen: list[int] = []

    def show(event: instance_pb2.InstanceEvent) -> None:
        state = event.instance.state
        text = f"{state_name(state)}" + (f" - {event.message}" if event.message else "")
        elapsed = f"{time.monotonic() - started:.0f}s"
        if spinner is not None:
            spinner.update(f"{name}: {text} ({elapsed}, waiting for {state_name(target)})")
        elif not seen or seen[-1] != state:
            err.print(f"{elapsed:>5} {name}: {text}")
        seen.append(state)

    try:
        if spinner is not None:
            spinner.start()
        outcome = settle(stream, target, first=first, require_change=require_change, on_event=show)
    except grpc.RpcError as error:
        failed = CallFailed.from_rpc_error(error)
        if failed.code == grpc.StatusCode.NOT_FOUND and target == GONE:
            return None
        if failed.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise Failure(f"{name} did not reach {state_name(target)} within {timeout:.0f}s "
                          "(the operation goes on; `aigcctl instances watch` follows it)", Exit.TIMEOUT) from None
        raise failed from None
    finally:
        if spinner is not None:
            spinner.stop()
        stream.cancel()
    if not outcome.done:
        raise Failure(f"{name}: {outcome.reason}", Exit.CHECK_FAILED)
    return outcome.instance
