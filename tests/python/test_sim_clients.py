"""An unmodified python-binance client against the built simulator binary.

Against the simulator started by `conftest.sim` (the built `pricefeed-sim`, PRICEFEED_SIM_BIN):
loads exchangeInfo, pages historicalTrades by fromId, and receives a live trade stream.
The only client changes are the documented base-URL overrides (see reference/testing.md):
`Client(ping=False)` + `API_URL`, and `BinanceSocketManager.STREAM_URL`.
"""

import asyncio
from decimal import Decimal

from binance import AsyncClient, BinanceSocketManager
from binance.client import Client

from conftest import wait


def client(ports):
    c = Client(ping=False)
    c.API_URL = f"http://{ports['spot']}/api"
    return c


def test_exchange_info(sim):
    info = client(sim).get_exchange_info()
    symbols = {s["symbol"]: s for s in info["symbols"]}
    assert "BTCUSDT" in symbols
    btc = symbols["BTCUSDT"]
    assert btc["status"] == "TRADING"
    price_filter = next(f for f in btc["filters"] if f["filterType"] == "PRICE_FILTER")
    assert Decimal(price_filter["tickSize"]) == Decimal("0.01")
    assert client(sim).get_symbol_info("ETHUSDT")["baseAsset"] == "ETH"


def test_historical_trades_paging_by_from_id(sim):
    c = client(sim)
    recent = wait(lambda: c.get_recent_trades(symbol="BTCUSDT", limit=1000), 10, "trades")
    wait(lambda: len(c.get_recent_trades(symbol="BTCUSDT", limit=1000)) >= 600, 10, "600 trades")
    recent = c.get_recent_trades(symbol="BTCUSDT", limit=1000)
    start = recent[0]["id"]
    got = []
    from_id = start
    while len(got) < 500:
        page = c.get_historical_trades(symbol="BTCUSDT", fromId=from_id, limit=100)
        assert page and page[0]["id"] == from_id
        got.extend(page)
        from_id = page[-1]["id"] + 1
    ids = [t["id"] for t in got]
    assert ids == list(range(start, start + len(ids)))
    by_id = {t["id"]: t for t in recent}
    for t in got:
        if t["id"] in by_id:
            assert t == by_id[t["id"]]
        assert Decimal(t["price"]) > 0 and len(t["price"].split(".")[1]) == 8


def test_live_trade_stream(sim):
    async def run():
        ac = AsyncClient()
        ac.API_URL = f"http://{sim['spot']}/api"
        bsm = BinanceSocketManager(ac)
        bsm.STREAM_URL = f"ws://{sim['spot']}/"
        msgs = []
        async with bsm.trade_socket("BTCUSDT") as ts:
            while len(msgs) < 20:
                msg = await asyncio.wait_for(ts.recv(), timeout=10)
                if msg.get("e") == "trade":
                    msgs.append(msg)
        await ac.close_connection()
        return msgs

    msgs = asyncio.run(run())
    ids = [m["t"] for m in msgs]
    assert all(m["s"] == "BTCUSDT" for m in msgs)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # what the stream said is what REST says
    page = client(sim).get_historical_trades(symbol="BTCUSDT", fromId=ids[0], limit=20)
    for m, r in zip(msgs, page):
        assert (m["t"], m["p"], m["q"], m["T"]) == (r["id"], r["price"], r["qty"], r["time"])
