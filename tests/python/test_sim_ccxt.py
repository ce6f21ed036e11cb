"""Unmodified ccxt 4.5 (REST) and ccxt.pro (WebSocket) against the built simulator binary.

The only client changes are the documented base-URL overrides (see reference/testing.md):
`urls.api.public/private` → the simulator's `/api/v3`, spot markets only, no currencies call,
and for ccxt.pro `urls.api.ws.spot` → `ws://…/ws`. ccxt.pro connects to `/ws/<n>` (a stream
index, not a stream name) and then sends SUBSCRIBE, which is what this exercises.
"""

import asyncio
from decimal import Decimal

import ccxt
import ccxt.pro as ccxtpro


def config(ports):
    base = f"http://{ports['spot']}/api/v3"
    return {
        "urls": {"api": {"public": base, "private": base}},
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
    }


def test_load_markets_and_fetch_trades(sim):
    ex = ccxt.binance(config(sim))
    markets = ex.load_markets()
    btc = markets["BTC/USDT"]
    assert (btc["id"], btc["base"], btc["quote"], btc["active"]) == ("BTCUSDT", "BTC", "USDT", True)
    assert Decimal(str(btc["precision"]["price"])) == Decimal("0.01")
    assert markets["ETH/USDT"]["id"] == "ETHUSDT"
    trades = ex.fetch_trades("BTC/USDT", limit=50)
    assert trades, "no trades"
    times = [t["timestamp"] for t in trades]
    assert times == sorted(times)
    for t in trades:
        assert t["symbol"] == "BTC/USDT" and t["price"] > 0 and t["amount"] > 0
        assert t["side"] in ("buy", "sell")


def test_watch_trades_matches_rest(sim):
    async def run():
        ex = ccxtpro.binance(config(sim))
        ex.urls["api"]["ws"]["spot"] = f"ws://{sim['spot']}/ws"
        try:
            got = []
            while len(got) < 30:
                got.extend(await asyncio.wait_for(ex.watch_trades("BTC/USDT"), timeout=10))
            # The aggregate trades from the first one on, over REST (ccxt's fetchTrades reads
            # aggTrades; historicalTrades would want an API key in ccxt).
            aggs = await ex.fetch_trades("BTC/USDT", since=got[0]["timestamp"], limit=1000)
            return got, aggs
        finally:
            await ex.close()

    got, aggs = asyncio.run(run())
    ids = [int(t["id"]) for t in got]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids are contiguous"
    assert all(t["symbol"] == "BTC/USDT" for t in got)
    # Every streamed trade lies in one REST aggregate (f <= t <= l) with the same price and time.
    by_range = [(a["info"]["f"], a["info"]["l"], a) for a in aggs]
    for t in got:
        tid = int(t["id"])
        agg = next((a for f, l, a in by_range if f <= tid <= l), None)
        assert agg is not None, f"trade {tid} not in REST aggTrades {by_range[0][:2]}..{by_range[-1][:2]}"
        assert (t["info"]["p"], t["timestamp"], t["side"]) == (agg["info"]["p"], agg["timestamp"], agg["side"])
    # Where every fill of an aggregate was streamed, the quantities add up to the aggregate's.
    streamed = {int(t["id"]): Decimal(t["info"]["q"]) for t in got}
    full = [(f, l, a) for f, l, a in by_range if all(i in streamed for i in range(f, l + 1))]
    assert full, "no aggregate fully streamed"
    for f, l, a in full:
        assert sum(streamed[i] for i in range(f, l + 1)) == Decimal(a["info"]["q"])


def test_a_flooding_aiohttp_client_sees_close_1008(sim):
    """ccxt.pro's transport (aiohttp) flooding past 5 messages/s gets close 1008, not 1006.

    The client keeps sending every 2 ms after the server's decision to close; a server that
    dropped the socket with that input unread reset the connection, and aiohttp reported 1006.
    """
    import aiohttp

    async def flood():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://{sim['spot']}/ws") as ws:
                for i in range(40):
                    try:
                        await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
                    except (ConnectionError, aiohttp.ClientError) as e:
                        return "reset while sending (1006)", repr(e)
                    await asyncio.sleep(0.002)
                while True:
                    msg = await ws.receive(timeout=5)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return ws.close_code, msg.extra

    async def run():
        return [await flood() for _ in range(5)]

    for code, reason in asyncio.run(run()):
        assert (code, reason) == (1008, "Too many requests")
