"""Fabric's solo consenter (orderer/consensus/solo) as a Python plugin.

The same semantics as the Rust plugin in ``plugins/solo/src/lib.rs``: one
node, no replication. Normal messages go through the host's block cutter
(``support.ordered_many``); a batch timer cuts what is pending after
BatchTimeout; a config message cuts the pending batch, then goes alone in a
config block (``support.write_config_block``). A message validated under an
older config sequence is revalidated first and dropped if it no longer
passes. After a failed write the plugin calls ``support.fail`` and refuses
every further envelope.

Built with componentize-py against the ``consenter`` world of
``wit/consenter.wit`` (see build.sh). The host calls the exports one at a
time, never concurrently, so the chain's state lives in module globals.
"""

from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, support, timers
from wit_world.imports.types import Batch, Envelope, EnvelopeInfo, Level, MessageClass

# The one timer solo uses.
BATCH_TIMER = 0


def _describe(e: Err) -> str:
    """A support-error (or a plain string error) as text."""
    v = e.value
    name = type(v).__name__
    if name.startswith("SupportError_"):
        kind = name[len("SupportError_"):]
        return f"{kind}: {v.value}"
    return str(v)


def _warn(msg: str) -> None:
    log.log(Level.WARN, msg)


class _Solo:
    def __init__(self) -> None:
        # Whether the batch timer is armed (Fabric's `timer != nil`).
        self.timer_armed = False
        # Set after a failed write: the chain is errored, ignore events.
        self.failed = False
        # The config sequence; only config blocks this plugin writes change
        # it, so it is read once and after each config block.
        self.sequence = support.sequence()

    def arm(self) -> None:
        timeout = support.shared_config().batch_timeout_ms
        try:
            timers.set(BATCH_TIMER, timeout)
            self.timer_armed = True
        except Err as e:
            support.fail(f"arming the batch timer: {_describe(e)}")
            self.failed = True

    def disarm(self) -> None:
        if self.timer_armed:
            timers.cancel(BATCH_TIMER)
            self.timer_armed = False

    def write(self, batch: Batch) -> None:
        try:
            support.write_block(support.create_next_block(batch), b"")
        except Err as e:
            support.fail(f"writing block: {_describe(e)}")
            self.failed = True

    def order_normal_run(self, run: List[Envelope]) -> None:
        """A run of normal messages in one cutter call, with the batch timer
        replayed message by message as Fabric's solo does it."""
        if not run:
            return
        r = support.ordered_many(run)
        for batch in r.batches:
            if self.failed:
                return
            self.write(batch)
        for pending in r.pending:
            if self.failed:
                return
            if self.timer_armed and not pending:
                self.disarm()
            elif not self.timer_armed and pending:
                self.arm()

    def order_config(self, env: Envelope) -> None:
        pending = support.cut()
        if pending.len() > 0:
            self.write(pending)
            if self.failed:
                return
        else:
            pending.__exit__(None, None, None)
        try:
            block = support.create_next_block(Batch([env]))
            support.write_config_block(block, b"")
        except Err as e:
            support.fail(f"writing config block: {_describe(e)}")
            self.failed = True
        self.sequence = support.sequence()
        self.disarm()

    def enqueue(self, envelopes: List[Tuple[Envelope, EnvelopeInfo]]) -> List[bool]:
        answers: List[bool] = []
        run: List[Envelope] = []
        for env, info in envelopes:
            if self.failed:
                answers.append(False)
                continue
            answers.append(True)
            # Revalidate a message validated under an older config (Fabric's
            # rule); it was accepted, so a failure only drops it.
            if info.config_sequence < self.sequence:
                try:
                    support.revalidate(env)
                except Err as e:
                    _warn(f"discarding message {env.tx_id()} that no longer passes validation: {_describe(e)}")
                    continue
            if info.class_ == MessageClass.CONFIG:
                self.order_normal_run(run)
                run = []
                if not self.failed:
                    self.order_config(env)
            else:
                run.append(env)
        if not self.failed:
            self.order_normal_run(run)
        return answers

    def on_timer(self, id: int) -> None:
        if id != BATCH_TIMER or self.failed:
            return
        self.timer_armed = False
        batch = support.cut()
        if batch.len() == 0:
            batch.__exit__(None, None, None)
            _warn("batch timer expired with no pending requests, this might indicate a bug")
            return
        self.write(batch)

    def halt(self) -> None:
        self.disarm()


_chain: Optional[_Solo] = None


class Chain(exports.Chain):
    """The `chain` export: forwards each event to the one chain."""

    def handle_chain(self, metadata: bytes) -> None:
        global _chain
        _chain = _Solo()

    def start(self) -> None:
        pass

    def enqueue(self, envelopes: List[Tuple[Envelope, EnvelopeInfo]]) -> List[bool]:
        if _chain is None:
            return [False] * len(envelopes)
        return _chain.enqueue(envelopes)

    def on_timer(self, id: int) -> None:
        if _chain is not None:
            _chain.on_timer(id)

    def halt(self) -> None:
        global _chain
        if _chain is not None:
            _chain.halt()
        _chain = None
