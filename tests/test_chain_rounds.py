"""Pure logic: which nodes go into which chain broadcast round."""

from __future__ import annotations

from kadeployd.actors.chain_rounds import ChainRounds
from kadeployd.chain import ChainResult, Hop, HopResult

NODES = ("a", "b", "c")


def hop(node: str) -> Hop:
    return Hop(f"10.0.0.{ord(node)}", 4000)


def test_a_round_starts_when_every_node_in_play_is_ready_in_deployment_order() -> None:
    rounds = ChainRounds(NODES)
    replies: dict[str, str | None] = {}
    for node in ("c", "a"):
        rounds.ready(node, hop(node), lambda verdict, node=node: replies.__setitem__(node, verdict))
        assert rounds.start_if_complete(NODES, window_over=False) == []
    rounds.ready("b", hop("b"), lambda verdict: replies.__setitem__("b", verdict))
    secret = rounds.secret
    assert rounds.start_if_complete(NODES, window_over=False) == [hop("a"), hop("b"), hop("c")]
    assert rounds.running_secret == secret
    assert rounds.secret != secret  # each round has a fresh secret


def test_the_gather_window_starts_a_round_without_the_stragglers() -> None:
    rounds = ChainRounds(NODES)
    rounds.ready("a", hop("a"), lambda verdict: None)
    assert rounds.start_if_complete(NODES, window_over=False) == []
    assert rounds.start_if_complete(NODES, window_over=True) == [hop("a")]


def test_finished_nodes_do_not_hold_a_round() -> None:
    rounds = ChainRounds(NODES)
    rounds.ready("a", hop("a"), lambda verdict: None)
    assert rounds.start_if_complete(("a",), window_over=False) == [hop("a")]


def test_a_node_that_failed_an_attempt_is_not_waited_for_and_joins_a_later_round() -> None:
    rounds = ChainRounds(NODES)
    rounds.ready("a", hop("a"), lambda verdict: None)
    rounds.ready("b", hop("b"), lambda verdict: None)
    assert rounds.start_if_complete(NODES, window_over=False) == []  # c is still coming
    rounds.attempt_failed("c")  # e.g. its reboot did not bring it back: it retries
    assert rounds.start_if_complete(NODES, window_over=False) == [hop("a"), hop("b")]
    rounds.finish(None, "stopped")
    rounds.ready("c", hop("c"), lambda verdict: None)
    assert rounds.start_if_complete(("c",), window_over=False) == [hop("c")]


def test_verdicts_come_from_the_result_and_failed_nodes_meet_again() -> None:
    rounds = ChainRounds(NODES)
    replies: dict[str, str | None] = {}
    for node in NODES:
        rounds.ready(node, hop(node), lambda verdict, node=node: replies.__setitem__(node, verdict))
    rounds.start_if_complete(NODES, window_over=False)
    good = {n: HopResult(hop(n).address, 10, "f00d", 0) for n in ("a", "c")}
    result = ChainResult(
        size=10,
        sha256="f00d",
        results={r.node: r for r in good.values()},
        dead={hop("b").address: "stalled"},
    )
    rounds.finish(result, None)
    assert replies == {"a": None, "b": "cut out of the chain: stalled", "c": None}
    assert rounds.served == {"a", "c"}
    # b retries alone: a and c, served, do not hold its round.
    rounds.ready("b", hop("b"), lambda verdict: None)
    assert rounds.start_if_complete(NODES, window_over=False) == [hop("b")]


def test_a_failed_broadcast_fails_every_node_of_the_round() -> None:
    rounds = ChainRounds(NODES)
    replies: dict[str, str | None] = {}
    for node in NODES:
        rounds.ready(node, hop(node), lambda verdict, node=node: replies.__setitem__(node, verdict))
    rounds.start_if_complete(NODES, window_over=False)
    rounds.finish(None, "image unreadable")
    assert replies == dict.fromkeys(NODES, "image unreadable")
    assert rounds.served == set()


def test_no_round_starts_while_a_relay_is_starting_with_its_secret() -> None:
    """A round that started without a node whose relay holds the forming secret would leave
    that relay with the secret of a round gone by: its handshakes would all fail."""
    rounds = ChainRounds(NODES)
    rounds.ready("a", hop("a"), lambda verdict: None)
    secret = rounds.secret_for("b")
    assert rounds.start_if_complete(NODES, window_over=True) == []  # b starts its relay
    rounds.ready("b", hop("b"), lambda verdict: None)
    assert rounds.start_if_complete(NODES, window_over=True) == [hop("a"), hop("b")]
    assert rounds.running_secret == secret


def test_a_relay_that_never_starts_stops_holding_the_round() -> None:
    rounds = ChainRounds(NODES)
    rounds.ready("a", hop("a"), lambda verdict: None)
    rounds.secret_for("b")
    rounds.secret_for("c")
    rounds.attempt_failed("b")  # its relay command failed
    rounds.leave("c")  # its attempt timed out
    assert rounds.start_if_complete(NODES, window_over=True) == [hop("a")]
