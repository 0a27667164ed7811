"""Per-node RabbitMQ users against the real broker (stream plugin + management HTTP API): what one
node's broker user can and cannot do on the streams, and revocation."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest

from tests.helpers import wait_for
from tests.services import RABBITMQ_MANAGEMENT_PORT, delete_streams
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.operator.edge_identity import broker_permissions, broker_user
from visioninapp.operator.identity_issuers import BrokerIssuer

MANAGEMENT = f"http://127.0.0.1:{RABBITMQ_MANAGEMENT_PORT}"


@pytest.fixture
def streams(rabbitmq_stream_port: int) -> Iterator[dict[str, str]]:
    """Uniquely named streams made by the admin user. Not named like `delete_test_streams`' ones
    (`edge-events-<hex>`): another session's start would delete them under this test's feet."""
    suffix = uuid4().hex[:10]
    names = {
        "edge": f"edge-events-id-{suffix}",
        "training": f"training-events-id-{suffix}",
        "other": f"edge-events-id-{suffix}ff",  # starts like the edge stream: the grant is anchored
    }
    admin = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port, "guest", "guest")
    for name in names.values():
        admin.ensure_stream(name)
    admin.close()
    yield names
    delete_streams(list(names.values()), rabbitmq_stream_port)


@pytest.fixture
def broker(rabbitmq_stream_port: int) -> Iterator[BrokerIssuer]:
    issuer = BrokerIssuer(MANAGEMENT, "guest", "guest", "/")
    yield issuer
    for name in issuer.users("visioninapp-edge-"):
        issuer._call("DELETE", f"/users/{name}", missing_ok=True)


def _issue(broker: BrokerIssuer, stream: str, namespace: str, node: str) -> tuple[str, str]:
    """What the operator's exchange does for a verified pod of `node` in `namespace`."""
    name, password = broker_user(namespace, node), secrets.token_urlsafe(24)
    broker.ensure(name, password, broker_permissions(stream))
    return name, password


def _bus(port: int, user: tuple[str, str]) -> RabbitStreamBus:
    return RabbitStreamBus("127.0.0.1", port, *user)


def _refused(action: Callable[[], Any]) -> str:
    with pytest.raises(Exception) as caught:
        action()
    return type(caught.value).__name__


def _bodies(port: int, stream: str) -> list[bytes]:
    admin = RabbitStreamBus("127.0.0.1", port, "guest", "guest")
    try:
        return [m.body for m in admin.read(stream, 0)]
    finally:
        admin.close()


def test_a_nodes_broker_user_only_publishes_edge_events(
    broker: BrokerIssuer, streams: dict[str, str], rabbitmq_stream_port: int
) -> None:
    port, edge = rabbitmq_stream_port, streams["edge"]
    bus = _bus(port, _issue(broker, edge, "plant-a", "jetson-a"))
    try:
        assert bus.publish(edge, "edge.plant-a.dock.jetson-a", [(1, b"a1"), (2, b"a2")]) == 2
        # a resend after a lost confirm: without read, the publisher-sequence query is refused
        # (rstream reports 0), but the broker drops publishing ids it has (no duplicate event)
        bus.publish(edge, "edge.plant-a.dock.jetson-a", [(1, b"a1"), (2, b"a2"), (3, b"a3")])
        assert _bodies(port, edge) == [b"a1", b"a2", b"a3"]
        # never read the fleet's events (nor its own), nor publish to another stream
        assert _refused(lambda: bus.read(edge, 0)) == "AccessRefused"
        assert _refused(lambda: bus.publish(streams["training"], "x", [(1, b"forged")])) == "AccessRefused"
        assert _refused(lambda: bus.publish(streams["other"], "x", [(1, b"forged")])) == "AccessRefused"
        assert _refused(lambda: bus.ensure_stream(f"edge-events-id-{uuid4().hex}")) == "AccessRefused"
    finally:
        bus.close()
    assert _bodies(port, streams["training"]) == _bodies(port, streams["other"]) == []


def test_a_revoked_nodes_broker_user_is_cut_off_while_the_others_keep_publishing(
    broker: BrokerIssuer, streams: dict[str, str], rabbitmq_stream_port: int
) -> None:
    port, edge = rabbitmq_stream_port, streams["edge"]
    user_a, user_b = _issue(broker, edge, "plant-c", "jetson-a"), _issue(broker, edge, "plant-c", "jetson-b")
    elsewhere = _issue(broker, edge, "plant-d", "jetson-a")  # the same node in another project
    bus_a, bus_b = _bus(port, user_a), _bus(port, user_b)
    try:
        assert bus_a.publish(edge, "edge.a", [(1, b"a1")]) == 1
        assert bus_b.publish(edge, "edge.b", [(1, b"b1")]) == 1
        # the management API lists a fresh connection a few seconds late: wait until it does
        wait_for(
            lambda: any(c.get("user") == user_a[0] for c in broker._call("GET", "/connections")),
            30,
            "the management API to list the connection",
            interval=0.5,
        )

        removed = broker.revoke_node("jetson-a")
        assert removed == sorted([user_a[0], elsewhere[0]])  # every project's user of that node only
        # the open connection is closed, a new one fails to authenticate
        wait_for(
            lambda: not any(c.get("user") == user_a[0] for c in broker._call("GET", "/connections")),
            15,
            "the revoked user's connection to be closed",
            interval=0.5,
        )
        _refused(lambda: bus_a.publish(edge, "edge.a", [(2, b"a2")]))  # its open connection is gone
        fresh = _bus(port, user_a)
        try:
            assert _refused(lambda: fresh.publish(edge, "edge.a", [(3, b"a3")])) == "AuthenticationFailure"
        finally:
            fresh.close()
        # node B is untouched, on its open connection and on a new one
        assert bus_b.publish(edge, "edge.b", [(2, b"b2")]) == 1
        again = _bus(port, user_b)
        try:
            assert again.publish(edge, "edge.b2", [(1, b"b3")]) == 1
        finally:
            again.close()
    finally:
        bus_b.close()
        with contextlib.suppress(Exception):  # its connection was closed by the broker
            bus_a.close()
    assert _bodies(port, edge) == [b"a1", b"b1", b"b2", b"b3"]
