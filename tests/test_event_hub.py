"""The event hub: typed events to per-deployment subscribers, bounded queues, lag instead of
blocking. Pure threads: the publisher is the test thread or a plain thread, as the StoreActor's
would be."""

from __future__ import annotations

import threading

from kadeployd.events import (
    DeploymentEnded,
    Event,
    EventHub,
    NodeLogged,
    NodeProgress,
    NodeStateChanged,
)

WAIT = 10.0  # upper bound for any wait; never reached when things work


def state(seq: int, node: str = "n-1", deployment: str = "d1", final: bool = False) -> Event:
    return NodeStateChanged(
        deployment, seq, node, "rebooting", "SetDeploymentEnv", "untrusted", 0, "", 1.0, final
    )


def test_a_subscriber_gets_the_typed_events_of_its_deployment_in_order() -> None:
    hub = EventHub()
    with hub.subscribe("d1") as mine, hub.subscribe("d2") as other:
        hub.publish_all([state(1), state(2, deployment="d2"), state(3)])
        hub.publish(NodeProgress("d1", "n-1", 10, 100))
        hub.publish(DeploymentEnded("d1", "succeeded", "", 2.0))
        delivery = mine.take()
        assert not delivery.lagged and not delivery.closed
        assert [type(e).__name__ for e in delivery.events] == [
            "NodeStateChanged",
            "NodeStateChanged",
            "NodeProgress",
            "DeploymentEnded",
        ]
        first = delivery.events[0]
        assert isinstance(first, NodeStateChanged)
        assert (first.seq, first.node, first.state) == (1, "n-1", "rebooting")
        assert [e.seq for e in other.take().events if isinstance(e, NodeStateChanged)] == [2]
        assert mine.take().events == ()  # taken: nothing left
    assert hub.subscribers("d1") == 0  # closed on leaving the block


def test_a_subscription_receives_only_its_kinds() -> None:
    hub = EventHub()
    with hub.subscribe("d1", kinds={NodeStateChanged}) as states:
        hub.publish_all([NodeLogged("d1", 1, "n-1", 1.0, "stdout", "hello"), state(2)])
        assert [type(e) for e in states.take().events] == [NodeStateChanged]


def test_a_slow_subscriber_is_marked_lagging_and_neither_blocks_nor_grows() -> None:
    hub = EventHub()
    slow = hub.subscribe("d1", maxsize=4)
    fast = hub.subscribe("d1", maxsize=1000)
    # The publisher (this thread) never waits for the slow subscriber, which never takes.
    for seq in range(1, 101):
        hub.publish(state(seq))
    assert slow.lagging
    assert slow.lags == 1
    assert slow.dropped >= 96  # at most its 4 queued events were ever kept
    assert len(fast.take().events) == 100  # the other subscriber lost nothing
    lagged = slow.take()
    assert lagged.lagged and lagged.events == ()  # re-read the database from your last seq
    hub.publish(state(101))
    after = slow.take()  # queued again from the take on
    assert not after.lagged
    assert [e.seq for e in after.events if isinstance(e, NodeStateChanged)] == [101]


def test_the_waker_is_called_when_something_becomes_pending_and_a_broken_one_is_contained() -> None:
    hub = EventHub()
    wakes: list[str] = []
    with hub.subscribe("d1", waker=lambda: wakes.append("wake")) as sub:
        hub.publish(state(1))
        hub.publish(state(2))  # still pending: no second wake
        assert wakes == ["wake"]
        sub.take()
        hub.publish(state(3))
        assert wakes == ["wake", "wake"]

    def broken() -> None:
        raise RuntimeError("a subscriber's bug")

    with hub.subscribe("d1", waker=broken) as sub, hub.subscribe("d1") as other:
        hub.publish(state(4))  # does not raise in the publisher
        assert len(sub.take().events) == 1
        assert len(other.take().events) == 1


def test_a_waiting_thread_is_woken_by_a_publication_from_another_thread() -> None:
    hub = EventHub()
    received: list[Event] = []
    subscribed = threading.Event()

    def follow() -> None:
        with hub.subscribe("d1") as sub:
            subscribed.set()
            while True:
                assert sub.wait(WAIT)
                delivery = sub.take()
                received.extend(delivery.events)
                if any(isinstance(e, DeploymentEnded) for e in delivery.events):
                    return

    follower = threading.Thread(target=follow)
    follower.start()
    assert subscribed.wait(WAIT)
    publisher = threading.Thread(
        target=lambda: hub.publish_all([state(1), DeploymentEnded("d1", "failed", "x", 1.0)])
    )
    publisher.start()
    publisher.join(WAIT)
    follower.join(WAIT)
    assert not follower.is_alive()
    assert [type(e) for e in received] == [NodeStateChanged, DeploymentEnded]


def test_resync_and_close_reach_every_subscriber() -> None:
    hub = EventHub()
    one, two = hub.subscribe("d1"), hub.subscribe("d2")
    hub.resync("d1")
    assert one.take().lagged
    assert not two.take().lagged
    hub.resync()
    assert one.take().lagged and two.take().lagged
    hub.close()
    assert one.wait(WAIT)  # a closed subscription wakes its waiter at once
    assert one.take().closed and two.closed
    assert hub.subscribe("d1").take().closed  # the hub is closed: nothing more to follow
    assert hub.subscribers("d1") == 0
