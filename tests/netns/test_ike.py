"""IKEv2 and IPsec through the tunnel, with the real thing: strongSwan in mn and ha (m6t.lab.ike).

What a user of m6t wants on an IPv4-only network: the IKE SA with the home agent comes up
through the tunnel, ESP carries the home address's traffic, and when the laptop roams (a new
IPv4 network, hence a new tunnel address) the same IKE SA follows it (MOBIKE, as a binding
update would) without a new authentication, and ESP flows again within seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from m6t.control.client import HelperClient
from m6t.lab.ike import CORRESPONDENT, HOME_ADDRESS, IkePair, available
from m6t.lab.lab import Lab, wait_for
from tests.netns.test_helper import status

pytestmark = pytest.mark.netns


@pytest.fixture
def ike(lab: Lab) -> Iterator[IkePair]:
    why = available()
    if why is not None:
        if os.environ.get("M6T_REQUIRE_NETNS") == "1":
            pytest.fail(f"{why}, and M6T_REQUIRE_NETNS=1 (run make setup)")
        pytest.skip(why)
    lab.start_gateway()
    lab.start_helper()
    with HelperClient(lab.helper_socket) as client:
        client.call("connect", profile=lab.profile())
    address = wait_for(lambda: (t := status(lab))["state"] == "connected" and t["address"], 10,
                       "the tunnel")
    pair = IkePair(lab, address)
    pair.start()
    yield pair


def test_ikev2_and_esp_with_the_home_agent_through_the_tunnel(ike: IkePair) -> None:
    ike.initiate()
    sa = ike.sa("mn")
    assert sa is not None, ike.log("mn")[-2000:]
    # IKE runs from the tunnel address (the care-of address), as the home agent sees it.
    assert sa.local == status(ike.lab)["address"]
    assert sa.children_installed == 1
    home = ike.sa("ha")
    assert home is not None and home.spis == sa.spis
    assert ike.ping(count=3), ike.log("mn")[-2000:]
    # Everything went through the gateway, as IPv6 in UDP: IKE on 500 then 4500, ESP in UDP.
    forwarded = ike.lab.metrics()['m6t_gateway_packets_total{direction="from_client"}']
    assert forwarded >= 5


def test_a_roam_keeps_the_ike_sa_and_esp_flows_again_within_seconds(ike: IkePair) -> None:
    ike.initiate()
    before = ike.sa("mn")
    assert before is not None and ike.ping()
    started = time.monotonic()
    ike.lab.roam()  # a new IPv4 network: a new tunnel address
    new = wait_for(lambda: (t := status(ike.lab))["state"] == "connected"
                   and t["address"] != before.local and t["address"], 10, "a new tunnel address")
    wait_for(lambda: ike.ping(wait=0.3), 20, "ESP through the new tunnel address",
             interval=0.1)
    elapsed = time.monotonic() - started
    print(f"ESP flows again {elapsed:.1f} s after the roam")
    after = ike.sa("mn")
    # The same IKE SA (same SPIs: no new IKE_SA_INIT, no new authentication), moved by MOBIKE
    # to the new tunnel address; the home agent's side agrees.
    assert after is not None and after.spis == before.spis, ike.log("mn")[-3000:]
    assert after.local == new
    home = ike.sa("ha")
    assert home is not None and home.spis == before.spis
    # As soon as m6t has the new address (about 1 s), not at strongSwan's first retransmission
    # of an update sent from the dead old address (4 s after it): charon watches the tunnel
    # device only (m6t.lab.ike, README "IKE and IPsec").
    assert elapsed < 3.5
    # Nor does the home agent hear of the laptop's private IPv4 addresses, of no use to it: the
    # laptop says it has no additional addresses (RFC 4555 NO_ADDITIONAL_ADDRESSES).
    assert "N(NO_ADD_ADDR)" in ike.log("mn")
    assert "N(ADD_4_ADDR)" not in ike.log("mn")


def test_esp_larger_than_the_tunnel_mtu_crosses_after_path_mtu_discovery(ike: IkePair) -> None:
    # ESP in UDP of a 3000-byte ping is larger than the tunnel MTU (1472) both ways. mn's
    # kernel fragments it before m6t0; the home agent sends it whole until the gateway answers
    # a Packet Too Big with the tunnel MTU ("MTU considerations"), then fragments too.
    ike.initiate()
    ike.lab.run("mn", ["ping", "-6", "-c", "1", "-W", "1", "-s", "3000", "-I", HOME_ADDRESS,
                       CORRESPONDENT], check=False)  # may be lost: it teaches the HA the MTU
    result = ike.lab.run("mn", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-s", "3000",
                                "-I", HOME_ADDRESS, CORRESPONDENT], check=False)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout
    learned = ike.lab.run("ha", ["ip", "-6", "route", "get", status(ike.lab)["address"]]).stdout
    assert "mtu 1472" in learned, learned
