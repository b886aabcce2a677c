"""A client of the Relay (contract §4 and §11): one link that survives dropped sockets and relay
restarts, sends reliably, refreshes an app's token, and stops on a refusal.

    client = RelayClient.app("wss://relay.example", token_provider=get_token)
    async with client:
        session = await client.request("robot-1")
        await client.send_offer(session, sdp)
        async for message in client:
            ...
"""
from .client import RelayClient, RelayRefused, RelayClosed, derived_secret, signed_device_query

__all__ = ["RelayClient", "RelayRefused", "RelayClosed", "derived_secret", "signed_device_query"]
