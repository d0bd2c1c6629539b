"""The call runner: deadlines, no second call per key, and a bounded number of stuck threads."""

from __future__ import annotations

import threading

import gevent

from libvirt_exporter.calls import CallKey, CallRunner, Domain, Status
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.store import Sample, Store
from tests.unit.conftest import wait_for


def test_stuck_threads_are_bounded_and_new_calls_are_skipped_when_all_are_taken() -> None:
    runner = CallRunner(max_concurrent=2, max_stuck=2)
    gate = threading.Event()
    try:
        outcomes = [
            runner.run(CallKey("block", Domain(name)), lambda: gate.wait, deadline=0.05) for name in "abc"
        ]
        assert [o.status for o in outcomes] == [Status.TIMEOUT, Status.TIMEOUT, Status.SKIPPED]
        assert runner.stuck_count() == 2
        assert (
            runner.run(CallKey("block", Domain("a")), lambda: lambda: 1, deadline=1).status is Status.SKIPPED
        )
    finally:
        gate.set()


def test_late_result_is_handed_over_once_the_call_returns() -> None:
    runner = CallRunner(max_concurrent=1, max_stuck=1)
    gate = threading.Event()
    late: list[Status] = []
    key = CallKey("bulk")
    outcome = runner.run(
        key, lambda: lambda: gate.wait() and "values", 0.05, on_late=lambda o: late.append(o.status)
    )
    assert outcome.status is Status.TIMEOUT and runner.is_in_flight(key)
    gate.set()
    wait_for(lambda: not runner.is_in_flight(key))
    assert late == [Status.OK]
    assert runner.run(key, lambda: lambda: "again", 1).value == "again"


def test_errors_are_outcomes_not_exceptions() -> None:
    runner = CallRunner(max_concurrent=1, max_stuck=1)

    def fail() -> None:
        raise RuntimeError("libvirt said no")

    outcome = runner.run(CallKey("block", Domain("a")), lambda: fail, 1)
    assert outcome.status is Status.ERROR and str(outcome.error) == "libvirt said no"


def test_a_late_sample_never_replaces_a_newer_one() -> None:
    store = Store()
    bulk, a = SamplerName.BULK, Domain("a")
    assert store.offer(bulk, a, Sample({"cpu.time": 2}, taken_at=200.0))
    assert not store.offer(bulk, a, Sample({"cpu.time": 1}, taken_at=100.0))
    assert store.sample(bulk, a) == Sample({"cpu.time": 2}, taken_at=200.0)


def test_calls_that_waited_for_a_slot_while_others_got_stuck_are_skipped_not_wedged() -> None:
    """More hung domains than stuck threads allowed: calls queued for a slot must not take the last
    threads of the pool, or a later call would wait for a thread forever and wedge its sampler."""
    runner = CallRunner(max_concurrent=2, max_stuck=2)
    gate = threading.Event()
    try:
        calls = [
            gevent.spawn(runner.run, CallKey("block", Domain(str(index))), lambda: gate.wait, 0.05)
            for index in range(6)
        ]
        wait_for(lambda: all(call.ready() for call in calls))
        statuses = [call.value.status for call in calls]
        assert statuses.count(Status.TIMEOUT) == 2 and statuses.count(Status.SKIPPED) == 4
        assert runner.stuck_count() == 2
    finally:
        gate.set()


def test_one_call_per_domain_at_a_time_whichever_sampler_sends_it() -> None:
    """Two samplers' calls on one domain take turns: the second waits for the first, then runs."""
    runner = CallRunner(max_concurrent=4, max_stuck=4)
    gate = threading.Event()
    order: list[str] = []

    def first() -> str:
        gate.wait()
        order.append("bulk")
        return "bulk"

    def second() -> str:
        order.append("block")
        return "block"

    bulk = gevent.spawn(runner.run, CallKey("bulk", Domain("a")), lambda: first, 5.0)
    gevent.sleep(0)  # the bulk call is dispatched
    block = gevent.spawn(runner.run, CallKey("block", Domain("a")), lambda: second, 5.0)
    other = runner.run(CallKey("block", Domain("b")), lambda: lambda: "b", 5.0)
    assert other.status is Status.OK, "a call on another domain does not wait"
    assert not block.dead, "the block call on the same domain waits for the bulk call"
    gate.set()
    gevent.joinall([bulk, block])
    assert order == ["bulk", "block"] and block.value.status is Status.OK


def test_a_domain_whose_call_is_stuck_gets_no_call_from_another_sampler() -> None:
    """On a hung QEMU a second call would only wait 30 s for the domain's job, holding a thread
    of ours and a worker of libvirtd's."""
    runner = CallRunner(max_concurrent=4, max_stuck=4)
    gate = threading.Event()
    sent: list[str] = []
    try:
        stuck = runner.run(CallKey("bulk", Domain("a")), lambda: gate.wait, 0.05)
        assert stuck.status is Status.TIMEOUT
        second = runner.run(CallKey("block", Domain("a")), lambda: lambda: sent.append("block"), 5.0)
        assert second.status is Status.SKIPPED and second.call is stuck.call
        assert sent == [] and runner.stuck_count() == 1
    finally:
        gate.set()
    wait_for(lambda: not runner.in_flight())
    again = runner.run(CallKey("block", Domain("a")), lambda: lambda: "values", 1.0)
    assert again.value == "values"


def test_a_greenlet_killed_while_it_waits_leaks_no_slot_and_leaves_no_key_in_flight() -> None:
    """A sampler greenlet killed (the exporter stopping, a cycle cancelled) while its call waits
    for a slot, or for its thread: the slot is given back, and the key is in flight only for as
    long as a thread runs the call."""
    runner = CallRunner(max_concurrent=1, max_stuck=4)
    gate = threading.Event()
    holder = gevent.spawn(runner.run, CallKey("bulk", Domain("a")), lambda: gate.wait, 5.0)
    wait_for(lambda: runner.busy_count() == 1)  # it holds the only slot
    waiting_key = CallKey("block", Domain("b"))
    waiting = gevent.spawn(runner.run, waiting_key, lambda: lambda: "never sent", 5.0)
    wait_for(lambda: runner.is_in_flight(waiting_key))  # it waits for the slot
    waiting.kill()
    assert not runner.is_in_flight(waiting_key)
    gate.set()
    holder.join()

    running_key = CallKey("block", Domain("c"))
    gate.clear()
    running = gevent.spawn(runner.run, running_key, lambda: gate.wait, 5.0)
    wait_for(lambda: runner.busy_count() == 1)  # its thread runs
    running.kill()
    assert runner.is_in_flight(running_key), "its thread still runs the call"
    gate.set()
    wait_for(lambda: not runner.in_flight())
    outcome = runner.run(CallKey("block", Domain("d")), lambda: lambda: "values", 1.0)
    assert outcome.value == "values", "the slots were given back"
