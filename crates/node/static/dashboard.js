// pricefeed dashboard: plain JavaScript, no build step, served by every node
// (crates/node/src/api/dashboard.rs). It talks only to the node that served it: REST under
// /api/v1 and the client WebSocket /api/v1/stream (protocol: crates/node/src/stream/protocol.md).
//
// Prices, quantities and thresholds are decimal strings in the API. They are shown exactly as
// received and compared with cmpDec (string arithmetic); floats are used only to draw the chart.
(() => {
  "use strict";

  /** A price with no trade for this long is marked stale. */
  const STALE_MS = 15000;
  /** Price channels one page subscribes to (the node allows node.stream.max_channels = 50 per
   *  connection by default; the rest of the budget is left for `alerts`). */
  const PRICE_CHANNELS = 45;
  const UNDERLYINGS_PER_PAGE = 8;
  /** Options of one underlying shown before they are folded behind a button. */
  const OPTIONS_UNFOLDED = 4;
  const CLUSTER_POLL_MS = 1500;
  const RECONCILE_POLL_MS = 5000;
  const CHART_REFRESH_MS = 20000;
  const RANKING_REFRESH_MS = 10000;
  const ALERTS_REFRESH_MS = 15000;
  const DELIVERY_POLL_MS = 2000;
  const SESSION_KEY = "pricefeed.session";

  // ---------------------------------------------------------------------------------------------
  // Helpers

  const $ = (id) => document.getElementById(id);

  /** Builds an element; children are nodes or strings (always inserted as text, never HTML). */
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "hidden") e.hidden = true;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const k of kids.flat()) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  /** Exact comparison of two decimal strings ("-12.50" vs "3"): -1, 0 or 1. */
  function cmpDec(a, b) {
    const parse = (s) => {
      s = String(s).trim();
      const neg = s.startsWith("-");
      const [i, f = ""] = s.replace(/^[-+]/, "").split(".");
      const int = i.replace(/^0+/, "");
      const frac = f.replace(/0+$/, "");
      return { neg: neg && (int !== "" || frac !== ""), int, frac };
    };
    const x = parse(a);
    const y = parse(b);
    if (x.neg !== y.neg) return x.neg ? -1 : 1;
    let c;
    if (x.int.length !== y.int.length) c = x.int.length < y.int.length ? -1 : 1;
    else if (x.int !== y.int) c = x.int < y.int ? -1 : 1;
    else {
      const n = Math.max(x.frac.length, y.frac.length);
      const fx = x.frac.padEnd(n, "0");
      const fy = y.frac.padEnd(n, "0");
      c = fx === fy ? 0 : fx < fy ? -1 : 1;
    }
    return x.neg ? -c : c;
  }

  const DECIMAL = /^[0-9]+(\.[0-9]+)?$/;

  /** The same decimal without trailing fractional zeros ("90012.50000000" → "90012.5"): a
   *  string operation, so the value shown stays exact. */
  function trimDec(s) {
    s = String(s);
    return s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  }
  const pad2 = (n) => String(n).padStart(2, "0");

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtDateTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${fmtClock(ms)}`;
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return "—";
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 120000) return `${Math.round(ms / 1000)} s`;
    if (ms < 7200000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
    return `${Math.floor(ms / 3600000)} h ${Math.floor((ms % 3600000) / 60000)} min`;
  }

  const MARKET_LABEL = { spot: "spot", usdm: "USD-M futures", options: "options" };
  const MARKET_SHORT = { spot: "spot", usdm: "USD-M", options: "options" };
  const keyOf = (market, symbol) => `${market}:${symbol}`;
  const splitKey = (key) => {
    const i = key.indexOf(":");
    return [key.slice(0, i), key.slice(i + 1)];
  };
  const priceChannel = (market, symbol) =>
    market === "spot" ? `prices:${symbol}` : `prices:${market}:${symbol}`;
  const marketQuery = (market) => (market === "spot" ? "" : `market=${encodeURIComponent(market)}`);

  const CONDITION_TEXT = {
    above: "price above",
    below: "price below",
    crosses_up: "price crosses up",
    crosses_down: "price crosses down",
    vwap_above: "VWAP above",
    vwap_below: "VWAP below",
    move_pct: "moves at least (%)",
    zscore: "σ from mean at least",
  };

  /** Estimate of (this browser's clock − the node's clock), from REST `age_ms`, so trade ages
   *  are right even when the two clocks disagree. */
  let clockOffset = 0;
  const serverNow = () => Date.now() - clockOffset;
  function noteServerAge(p) {
    if (p && typeof p.age_ms === "number" && p.age_ms > 0) {
      clockOffset = Date.now() - (p.ts + p.age_ms);
    }
  }

  class ApiError extends Error {
    constructor(status, body) {
      const detail =
        body && typeof body === "object" ? body.detail || body.title : String(body || "");
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  /** One JSON request to the node; problem+json errors become ApiError with the detail. With
   *  `auth`, a 401 is retried once after refreshing the session. */
  async function api(path, opts = {}) {
    const init = {
      method: opts.method || "GET",
      headers: { accept: "application/json" },
      signal: AbortSignal.timeout(opts.timeout || 10000),
    };
    if (opts.body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    if (opts.auth) {
      await session.fresh();
      if (!session.access) throw new ApiError(401, { detail: "not signed in" });
      init.headers.authorization = `Bearer ${session.access}`;
    }
    const res = await fetch(path, init);
    if (res.status === 401 && opts.auth && !opts.retried && (await session.renew())) {
      return api(path, { ...opts, retried: true });
    }
    if (res.status === 204) return null;
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }

  function say(el, text, kind) {
    el.textContent = text;
    el.className = `msg ${kind || ""}`.trim();
  }

  // ---------------------------------------------------------------------------------------------
  // The client WebSocket: price channels of the rows on screen, and `alerts` once signed in.

  const stream = {
    ws: null,
    open: false,
    backoff: 500,
    wantPrices: new Set(),
    sent: new Set(),
    wantAlerts: false,
    authed: false,
    syncQueued: false,
    frames: 0,

    connect() {
      const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/stream`;
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        this.retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.open = true;
        this.backoff = 500;
        this.sent.clear();
        this.authed = false;
        liveStatus(true, "live: stream connected");
        if (session.access) this.auth();
        this.sync();
        prices.tick();
      };
      ws.onmessage = (ev) => {
        let m;
        try {
          m = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        this.onFrame(m);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.open = false;
        this.authed = false;
        prices.tick();
        this.retry();
      };
    },

    retry() {
      const wait = this.backoff + Math.random() * 250;
      this.backoff = Math.min(10000, this.backoff * 2);
      liveStatus(false, `stream disconnected; reconnecting in ${Math.ceil(wait / 1000)} s`);
      setTimeout(() => this.connect(), wait);
    },

    /** Drops the connection (and with it any authentication) and opens a new one. */
    reconnect() {
      const ws = this.ws;
      this.ws = null;
      this.open = false;
      if (ws) ws.close(1000);
      this.backoff = 500;
      this.connect();
    },

    send(msg) {
      if (this.ws && this.open) this.ws.send(JSON.stringify(msg));
    },

    setPrices(channels) {
      this.wantPrices = new Set(channels);
      this.scheduleSync();
    },

    scheduleSync() {
      if (this.syncQueued) return;
      this.syncQueued = true;
      setTimeout(() => {
        this.syncQueued = false;
        this.sync();
      }, 50);
    },

    /** Sends what differs between the wanted and the subscribed channels (one message each way,
     *  so page changes stay far below the node's message rate limit). */
    sync() {
      if (!this.open) return;
      const drop = [...this.sent].filter(
        (c) => (c.startsWith("prices:") && !this.wantPrices.has(c)) || (c === "alerts" && !this.wantAlerts),
      );
      if (drop.length) {
        this.send({ op: "unsubscribe", channels: drop });
        drop.forEach((c) => this.sent.delete(c));
      }
      const add = [...this.wantPrices].filter((c) => !this.sent.has(c));
      if (this.wantAlerts && this.authed && !this.sent.has("alerts")) add.push("alerts");
      if (add.length) {
        this.send({ op: "subscribe", channels: add });
        add.forEach((c) => this.sent.add(c));
      }
    },

    auth() {
      if (!session.access) return;
      this.send({ op: "auth", token: session.access });
    },

    onFrame(m) {
      this.frames += 1;
      switch (m.type) {
        case "price":
          prices.onPrice(m.data);
          break;
        case "alert":
          alerts.onTrigger(m.data, true);
          break;
        case "authenticated":
          this.authed = true;
          this.sync();
          break;
        case "unsubscribed":
          // The node ends `alerts` itself when the token expires.
          for (const c of m.channels || []) this.sent.delete(c);
          if (this.wantAlerts && !this.sent.has("alerts")) this.scheduleSync();
          break;
        case "list":
          this.sent = new Set(m.channels || []);
          this.sync();
          break;
        case "error":
          this.onError(m);
          break;
        default:
          break;
      }
    },

    onError(m) {
      switch (m.code) {
        case "unknown_instrument":
        case "unknown_channel":
          // Stays in `sent`, so it is not asked for again on this connection.
          if (m.channel) prices.noFeed(m.channel);
          break;
        case "token_expired":
        case "unauthorized":
        case "auth_required":
          this.authed = false;
          this.sent.delete("alerts");
          if (session.refresh) session.renew();
          break;
        case "rate_limited":
        case "too_many_channels":
          // Which channels made it is unknown: ask the node, then subscribe what is missing.
          setTimeout(() => this.send({ op: "list" }), 1500);
          break;
        default:
          break;
      }
    },
  };

  function liveStatus(up, text) {
    const el = $("live-status");
    el.textContent = text;
    el.className = `pill ${up ? "live" : "down"}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Live prices: a page of underlyings with their derivatives.

  const prices = {
    rows: new Map(), // key → { tr, price, dir, age, badge, last, market, symbol, live }
    cursors: [null],
    page: 0,
    next: null,
    pending: new Map(),
    flushQueued: false,
    quotes: new Set(["USDT"]),

    async load() {
      const cursor = this.cursors[this.page];
      const q = `/api/v1/underlyings?limit=${UNDERLYINGS_PER_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const page = await api(q);
      this.next = page.next_cursor || null;
      const details = await Promise.all(
        page.items.map((u) =>
          // The detail is the underlying's fields plus `derivatives`.
          api(`/api/v1/underlyings/${encodeURIComponent(u.symbol)}`).catch(() => ({ ...u, derivatives: [] })),
        ),
      );
      this.render(details);
      $("prices-prev").disabled = this.page === 0;
      $("prices-next").disabled = !this.next;
      $("prices-page").textContent = `page ${this.page + 1}`;
    },

    render(details) {
      const body = $("price-rows");
      const old = this.rows;
      this.rows = new Map();
      const frag = document.createDocumentFragment();
      if (!details.length) {
        frag.append(
          h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No instruments yet: they appear once the scheduler has synced them from the broker.")),
        );
      }
      for (const d of details) {
        const u = d;
        this.quotes.add(u.quote_asset);
        frag.append(this.row("spot", u.symbol, `${u.base_asset}/${u.quote_asset}${u.status !== "TRADING" ? ` · ${u.status}` : ""}`, u.price, false, old));
        const derivs = [...(d.derivatives || [])].sort(derivOrder);
        const options = derivs.filter((x) => x.kind === "option");
        for (const x of derivs.filter((x) => x.kind !== "option")) {
          frag.append(this.row(x.market, x.symbol, derivDesc(x), x.price, false, old));
        }
        const fold = options.length > OPTIONS_UNFOLDED;
        if (fold) {
          const btn = h("button", {
            type: "button",
            class: "link",
            "aria-expanded": "false",
            text: `Show ${options.length} options of ${u.symbol}`,
          });
          const group = `opt-${u.symbol}`;
          btn.addEventListener("click", () => {
            const open = btn.getAttribute("aria-expanded") !== "true";
            btn.setAttribute("aria-expanded", String(open));
            btn.textContent = `${open ? "Hide" : "Show"} ${options.length} options of ${u.symbol}`;
            body.querySelectorAll(`tr[data-group="${CSS.escape(group)}"]`).forEach((tr) => {
              tr.hidden = !open;
            });
            this.subscribeVisible();
          });
          frag.append(h("tr", { class: "group-row" }, h("td", { colspan: 4 }, btn)));
        }
        for (const x of options) {
          const tr = this.row(x.market, x.symbol, derivDesc(x), x.price, fold, old);
          if (fold) tr.dataset.group = `opt-${u.symbol}`;
          frag.append(tr);
        }
      }
      body.replaceChildren(frag);
      this.subscribeVisible();
      this.tick();
      chart.offerSymbols();
      ranking.offerGroups(this.quotes);
      alerts.offerSymbols();
    },

    row(market, symbol, desc, price, hidden, old) {
      const key = keyOf(market, symbol);
      const priceEl = h("span", { class: "price" }, "—");
      const dirEl = h("span", { class: "dir", "aria-hidden": "true" });
      const ageEl = h("span", { class: "age" }, "—");
      const badge = h("span", { class: "badge stale-badge", hidden: true }, "stale");
      const nolive = h("span", { class: "badge nolive-badge", hidden: true, title: "Beyond this page's channel budget: not pushed" }, "not streamed");
      const label = MARKET_LABEL[market] || market;
      const tr = h(
        "tr",
        { class: market === "spot" ? "und" : "der", "data-key": key, hidden },
        h(
          "th",
          { scope: "row" },
          h("button", { type: "button", class: "link sym", "aria-label": `${symbol}, ${label}: show its chart`, onclick: () => chart.show(key, true) }, symbol),
          h("span", { class: "desc muted" }, desc),
        ),
        h("td", { class: "mkt" }, h("abbr", { title: label }, MARKET_SHORT[market] || market)),
        h("td", { class: "num price-cell" }, dirEl, priceEl),
        h("td", { class: "num age-cell" }, ageEl, badge, nolive),
      );
      const r = { tr, price: priceEl, dir: dirEl, age: ageEl, badge, nolive, last: null, market, symbol, updates: 0 };
      const prev = old.get(key);
      const start = prev && prev.last && (!price || prev.last.trade_id >= price.trade_id) ? prev.last : price;
      if (price === start) noteServerAge(price);
      if (start) this.show(r, start, null);
      if (prev) r.updates = prev.updates;
      this.rows.set(key, r);
      return tr;
    },

    /** Subscribes the price channels of the rows on screen, in page order, within the budget. */
    subscribeVisible() {
      const channels = [];
      for (const r of this.rows.values()) {
        const visible = !r.tr.hidden;
        const live = visible && channels.length < PRICE_CHANNELS;
        if (live) channels.push(priceChannel(r.market, r.symbol));
        r.nolive.hidden = !visible || live;
      }
      stream.setPrices(channels);
    },

    onPrice(d) {
      this.pending.set(keyOf(d.market, d.symbol), d);
      if (this.flushQueued) return;
      this.flushQueued = true;
      // Conflate to one DOM update per row per frame; the timer covers hidden tabs.
      const flush = () => {
        if (!this.flushQueued) return;
        this.flushQueued = false;
        const batch = this.pending;
        this.pending = new Map();
        for (const [key, d] of batch) {
          const r = this.rows.get(key);
          if (!r) continue;
          if (r.last && d.trade_id <= r.last.trade_id) continue;
          this.show(r, d, r.last);
          r.updates += 1;
        }
        this.tick();
        alerts.hint();
      };
      requestAnimationFrame(flush);
      setTimeout(flush, 250);
    },

    show(r, d, prev) {
      r.price.textContent = trimDec(d.price);
      r.last = { price: d.price, ts: d.ts, trade_id: d.trade_id };
      r.tr.dataset.tradeId = String(d.trade_id);
      if (prev) {
        const c = cmpDec(d.price, prev.price);
        r.dir.textContent = c > 0 ? "▲" : c < 0 ? "▼" : "";
        r.dir.className = `dir ${c > 0 ? "up" : c < 0 ? "down" : ""}`;
        r.price.title = c > 0 ? `up from ${trimDec(prev.price)}` : c < 0 ? `down from ${trimDec(prev.price)}` : "";
        if (c !== 0) {
          r.tr.classList.remove("flash-up", "flash-down");
          void r.tr.offsetWidth;
          r.tr.classList.add(c > 0 ? "flash-up" : "flash-down");
        }
      }
    },

    /** Ages and stale marks, once a second and after every change. */
    tick() {
      const now = serverNow();
      for (const r of this.rows.values()) {
        if (!r.last) {
          r.age.textContent = "no trade yet";
          continue;
        }
        const age = now - r.last.ts;
        r.age.textContent = fmtAge(age);
        const stale = age > STALE_MS || !stream.open;
        r.tr.classList.toggle("stale", stale);
        r.badge.hidden = !stale;
        r.badge.title = stream.open ? `no trade for ${fmtAge(age)}` : "the live stream is down";
      }
    },

    noFeed(channel) {
      for (const r of this.rows.values()) {
        if (priceChannel(r.market, r.symbol) === channel) {
          r.nolive.hidden = false;
          r.nolive.textContent = "no live feed";
        }
      }
    },

    latest(key) {
      const r = this.rows.get(key);
      return r && r.last ? r.last.price : null;
    },
  };

  function derivOrder(a, b) {
    const rank = { perpetual: 0, future: 1, option: 2 };
    return (
      (rank[a.kind] ?? 3) - (rank[b.kind] ?? 3) ||
      (a.expiry || 0) - (b.expiry || 0) ||
      (a.strike && b.strike ? cmpDec(a.strike, b.strike) : 0) ||
      a.symbol.localeCompare(b.symbol)
    );
  }

  function derivDesc(x) {
    const exp = x.expiry ? ` · ${fmtDateTime(x.expiry).slice(0, 10)}` : "";
    if (x.kind === "option") return `${(x.option_side || "").toLowerCase()} ${x.strike ? trimDec(x.strike) : ""}${exp}`.trim();
    if (x.kind === "future") return `future${exp}`;
    return x.kind;
  }

  // ---------------------------------------------------------------------------------------------
  // Chart: 24 h candles with the VWAP line (validated solid, not yet validated dashed), zoomable,
  // and the instrument's 24 h statistics and σ rank.

  const IVSEC = { "1m": 60, "5m": 300, "1h": 3600 };
  const COLORS = { up: "#0a6b2f", down: "#b3261e", vwapOk: "#1d4ed8", vwapNew: "#b45309" };

  const chart = {
    key: null,
    interval: "1m",
    plot: null,
    full: null,
    zoomed: false,
    loading: 0,
    loads: 0,

    init() {
      $("chart-symbol").addEventListener("change", (e) => this.show(e.target.value, false));
      document.querySelectorAll('input[name="interval"]').forEach((r) =>
        r.addEventListener("change", (e) => {
          this.interval = e.target.value;
          this.zoomed = false;
          this.load();
        }),
      );
      $("zoom-in").addEventListener("click", () => this.zoom(0.5));
      $("zoom-out").addEventListener("click", () => this.zoom(2));
      $("pan-left").addEventListener("click", () => this.pan(-0.25));
      $("pan-right").addEventListener("click", () => this.pan(0.25));
      $("zoom-reset").addEventListener("click", () => this.reset());
      $("chart-form").addEventListener("submit", (e) => e.preventDefault());
      new ResizeObserver(() => this.resize()).observe($("chart-plot"));
      setInterval(() => this.key && this.load(), CHART_REFRESH_MS);
    },

    /** Fills the instrument list from the price table (and keeps the current choice). */
    offerSymbols() {
      const sel = $("chart-symbol");
      const keys = [...prices.rows.keys()];
      if (this.key && !keys.includes(this.key)) keys.unshift(this.key);
      sel.replaceChildren(
        ...keys.map((k) => {
          const [m, s] = splitKey(k);
          return h("option", { value: k, selected: k === this.key }, `${s} · ${MARKET_LABEL[m] || m}`);
        }),
      );
      if (!this.key && keys.length) this.show(keys[0], false);
    },

    show(key, focus) {
      if (this.key !== key) this.zoomed = false;
      this.key = key;
      const sel = $("chart-symbol");
      if (![...sel.options].some((o) => o.value === key)) {
        const [m, s] = splitKey(key);
        sel.prepend(h("option", { value: key }, `${s} · ${MARKET_LABEL[m] || m}`));
      }
      sel.value = key;
      alerts.prefill(key);
      this.load();
      if (focus) {
        $("chart").scrollIntoView({ block: "start" });
        sel.focus({ preventScroll: true });
      }
    },

    async load() {
      const key = this.key;
      if (!key) return;
      const iv = this.interval;
      const [market, symbol] = splitKey(key);
      const mq = marketQuery(market);
      const q = `?interval=${iv}${mq ? `&${mq}` : ""}`;
      const sym = encodeURIComponent(symbol);
      const ticket = ++this.loading;
      const [c, v, s] = await Promise.allSettled([
        api(`/api/v1/prices/${sym}/history${q}`),
        api(`/api/v1/vwap/${sym}/history${q}`),
        api(`/api/v1/stats/${sym}${mq ? `?${mq}` : ""}`),
      ]);
      if (ticket !== this.loading) return; // a newer choice is loading
      $("chart-title").textContent = `${symbol} · ${MARKET_LABEL[market] || market} · ${iv}`;
      this.draw(
        c.status === "fulfilled" ? c.value.candles : [],
        v.status === "fulfilled" ? v.value.points : [],
        iv,
        c.status === "rejected" ? c.reason : null,
      );
      this.stats(s.status === "fulfilled" ? s.value : null, s.status === "rejected" ? s.reason : null);
      this.loads += 1;
    },

    draw(candles, allPoints, iv, err) {
      const ivSec = IVSEC[iv];
      // Windows before the first trade have no VWAP: they would only stretch the time axis.
      const firstPriced = allPoints.findIndex((p) => p.vwap !== null);
      const points = firstPriced < 0 ? [] : allPoints.slice(firstPriced);
      const xs = new Set();
      for (const k of candles) xs.add(k.start / 1000);
      for (const p of points) xs.add(p.end / 1000);
      const x = [...xs].sort((a, b) => a - b);
      // One empty slot after the last candle, so the auto-ranged time axis shows it whole.
      if (x.length) x.push(x[x.length - 1] + ivSec);
      const at = new Map(x.map((t, i) => [t, i]));
      const col = () => new Array(x.length).fill(undefined);
      const [o, hi, lo, cl, ok, nw] = [col(), col(), col(), col(), col(), col()];
      for (const k of candles) {
        const i = at.get(k.start / 1000);
        o[i] = +k.open;
        hi[i] = +k.high;
        lo[i] = +k.low;
        cl[i] = +k.close;
      }
      // `undefined` is "no point here" (the line runs on), `null` a gap; the dashed line starts
      // at the last validated point so the two read as one line.
      let prev = null;
      for (const p of points) {
        const i = at.get(p.end / 1000);
        const val = p.vwap === null ? null : +p.vwap;
        if (val === null) {
          ok[i] = null;
          nw[i] = null;
        } else if (p.validated) {
          ok[i] = val;
          nw[i] = prev && !prev.validated && prev.vwap !== null ? val : null;
        } else {
          nw[i] = val;
          ok[i] = null;
          if (prev && prev.validated && prev.vwap !== null) nw[at.get(prev.end / 1000)] = +prev.vwap;
        }
        prev = p;
      }
      const data = [x, o, hi, lo, cl, ok, nw];
      this.ivSec = ivSec;
      const el = $("chart-plot");
      // uPlot auto-ranges time to the first and last x; a zoom survives a refresh.
      const keep = this.plot && this.zoomed ? { min: this.plot.scales.x.min, max: this.plot.scales.x.max } : null;
      this.full = x.length ? { min: x[0], max: x[x.length - 1] } : null;
      this.zoomed = false;
      if (!this.plot) this.plot = new uPlot(this.options(el), data, el);
      else this.plot.setData(data);
      if (keep) this.plot.setScale("x", keep);

      // The same facts in words, and the latest candles as exact strings.
      const [market, symbol] = splitKey(this.key);
      const last = candles[candles.length - 1];
      const lastV = [...points].reverse().find((p) => p.vwap !== null);
      const priced = points.filter((p) => p.vwap !== null);
      const nOk = priced.filter((p) => p.validated).length;
      let text;
      if (err) text = `Candles unavailable: ${err.message}`;
      else if (!candles.length) text = `${symbol}: no trades in the last 24 h yet.`;
      else {
        text =
          `${symbol} (${MARKET_LABEL[market] || market}): ${candles.length} ${iv} candles from ${fmtDateTime(candles[0].start)} to ${fmtClock(last.end)}; ` +
          `last close ${trimDec(last.close)}` +
          (lastV ? `; VWAP ${trimDec(lastV.vwap)} (${lastV.validated ? "validated" : "not yet validated"})` : "") +
          `; ${nOk} of ${priced.length} VWAP points validated.`;
      }
      $("chart-caption").textContent = text;
      el.setAttribute("aria-label", `Candle chart. ${text}`);
      el.dataset.candles = String(candles.length);
      el.dataset.vwapPoints = String(priced.length);
      el.dataset.vwapValidated = String(nOk);
      $("candle-rows").replaceChildren(
        ...candles
          .slice(-10)
          .reverse()
          .map((k) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, fmtClock(k.start)),
              h("td", { class: "num" }, trimDec(k.open)),
              h("td", { class: "num" }, trimDec(k.high)),
              h("td", { class: "num" }, trimDec(k.low)),
              h("td", { class: "num" }, trimDec(k.close)),
              h("td", { class: "num" }, trimDec(k.volume)),
              h("td", {}, k.validated ? "yes" : "not yet"),
            ),
          ),
      );
    },

    options(el) {
      const fmt = (u, v) => (v === null || v === undefined ? "—" : String(v));
      return {
        width: Math.max(280, el.clientWidth),
        height: this.height(),
        cursor: { drag: { x: true, y: false, setScale: true } },
        scales: { x: { time: true } },
        legend: { live: true },
        series: [
          { label: "Time", value: (u, v) => (v === null || v === undefined ? "—" : fmtDateTime(v * 1000)) },
          { label: "Open", paths: () => null, points: { show: false }, value: fmt },
          { label: "High", paths: () => null, points: { show: false }, value: fmt },
          { label: "Low", paths: () => null, points: { show: false }, value: fmt },
          { label: "Close", paths: () => null, points: { show: false }, value: fmt },
          { label: "VWAP validated", stroke: COLORS.vwapOk, width: 2, value: fmt },
          { label: "VWAP not yet validated", stroke: COLORS.vwapNew, width: 2, dash: [6, 4], value: fmt },
        ],
        axes: [{}, { size: 80 }],
        hooks: {
          drawSeries: [],
          draw: [(u) => this.candles(u)],
          setSelect: [],
          setScale: [
            (u, key) => {
              if (key !== "x" || !this.full) return;
              const s = u.scales.x;
              this.zoomed = s.min > this.full.min + 1 || s.max < this.full.max - 1;
            },
          ],
        },
      };
    },

    /** Candle bodies and wicks, drawn under uPlot's own lines: up hollow, down filled. */
    candles(u) {
      const [x, o, hi, lo, cl] = u.data;
      const ctx = u.ctx;
      const ivSec = this.ivSec || 60;
      const { left, top, width, height } = u.bbox;
      const px = (t) => u.valToPos(t, "x", true);
      const py = (v) => u.valToPos(v, "y", true);
      const w = Math.max(1, Math.min(24 * uPlot.pxRatio, (px(x[0] + ivSec) - px(x[0])) * 0.7));
      ctx.save();
      ctx.setLineDash([]);
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      ctx.lineWidth = Math.max(1, uPlot.pxRatio);
      for (let i = 0; i < x.length; i++) {
        if (o[i] === undefined || o[i] === null) continue;
        const cx = Math.round(px(x[i] + ivSec / 2));
        if (cx < left - w || cx > left + width + w) continue;
        const up = cl[i] >= o[i];
        ctx.strokeStyle = ctx.fillStyle = up ? COLORS.up : COLORS.down;
        ctx.beginPath();
        ctx.moveTo(cx, py(hi[i]));
        ctx.lineTo(cx, py(lo[i]));
        ctx.stroke();
        const y1 = py(Math.max(o[i], cl[i]));
        const y2 = py(Math.min(o[i], cl[i]));
        const bh = Math.max(1, y2 - y1);
        if (up) {
          ctx.fillStyle = "#ffffff";
          ctx.fillRect(cx - w / 2, y1, w, bh);
          ctx.strokeRect(cx - w / 2, y1, w, bh);
        } else {
          ctx.fillRect(cx - w / 2, y1, w, bh);
        }
      }
      ctx.restore();
    },

    height() {
      return window.matchMedia("(max-width: 40rem)").matches ? 260 : 340;
    },

    resize() {
      if (!this.plot) return;
      const w = Math.max(280, $("chart-plot").clientWidth);
      if (w !== this.plot.width) this.plot.setSize({ width: w, height: this.height() });
    },

    zoom(f) {
      if (!this.plot || !this.full) return;
      const s = this.plot.scales.x;
      const mid = (s.min + s.max) / 2;
      const span = Math.min(this.full.max - this.full.min, Math.max(this.ivSec, (s.max - s.min) * f));
      let min = mid - span / 2;
      let max = mid + span / 2;
      if (min < this.full.min) [min, max] = [this.full.min, this.full.min + span];
      if (max > this.full.max) [min, max] = [this.full.max - span, this.full.max];
      this.plot.setScale("x", { min, max });
    },

    pan(f) {
      if (!this.plot || !this.full) return;
      const s = this.plot.scales.x;
      const span = s.max - s.min;
      const shift = Math.max(this.full.min - s.min, Math.min(this.full.max - s.max, span * f));
      this.plot.setScale("x", { min: s.min + shift, max: s.max + shift });
    },

    reset() {
      if (this.plot && this.full) this.plot.setScale("x", { ...this.full });
    },

    stats(s, err) {
      const dl = $("stats");
      const item = (k, v) => h("div", {}, h("dt", {}, k), h("dd", {}, v));
      if (!s) {
        const why = err && err.status === 404 ? `not yet (${err.message})` : err ? `unavailable: ${err.message}` : "—";
        dl.replaceChildren(item("24 h statistics", why));
        dl.dataset.rank = "";
        return;
      }
      const r = s.rank;
      const change = s.change_pct === null ? "—" : `${s.change_pct.startsWith("-") ? "" : "+"}${s.change_pct} %`;
      dl.replaceChildren(
        item("σ rank", r ? `${r.position} of ${r.of} (${r.value}) in ${r.group}` : "not ranked yet"),
        item("σ (1-min closes)", s.stddev === null ? "—" : trimDec(s.stddev)),
        item("Mean", s.mean === null ? "—" : trimDec(s.mean)),
        item("Min", s.min === null ? "—" : trimDec(s.min)),
        item("Max", s.max === null ? "—" : trimDec(s.max)),
        item("Change", change),
        item("Samples", String(s.samples)),
      );
      dl.dataset.rank = r ? r.value : "";
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Ranking table (seed 003): one group, σ descending.

  const ranking = {
    group: "USDT",
    cursors: [null],
    page: 0,

    init() {
      $("ranking-group").addEventListener("change", (e) => {
        this.group = e.target.value;
        this.cursors = [null];
        this.page = 0;
        this.load();
      });
      $("ranking-next").addEventListener("click", () => {
        this.page += 1;
        this.load();
      });
      $("ranking-first").addEventListener("click", () => {
        this.page = 0;
        this.load();
      });
      setInterval(() => this.load(), RANKING_REFRESH_MS);
    },

    offerGroups(quotes) {
      const sel = $("ranking-group");
      const have = new Set([...sel.options].map((o) => o.value));
      for (const q of [...quotes].sort()) if (!have.has(q)) sel.append(h("option", { value: q }, q));
    },

    async load() {
      const cursor = this.cursors[this.page];
      const q = `/api/v1/stats?group=${encodeURIComponent(this.group)}&order=stddev&limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      let p;
      try {
        p = await api(q);
      } catch (e) {
        $("ranking-rows").replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, `Ranking unavailable: ${e.message}`)));
        return;
      }
      this.cursors[this.page + 1] = p.next_cursor || null;
      $("ranking-next").disabled = !p.next_cursor;
      $("ranking-first").disabled = this.page === 0;
      const rows = p.items.map((s) =>
        h(
          "tr",
          { "data-key": keyOf(s.market, s.symbol) },
          h("td", { class: "num" }, s.rank ? `${s.rank.position}/${s.rank.of}` : "—"),
          h("th", { scope: "row" }, h("button", { type: "button", class: "link", "aria-label": `${s.symbol}: show its chart`, onclick: () => chart.show(keyOf(s.market, s.symbol), true) }, s.symbol)),
          h("td", { class: "num" }, s.stddev === null ? "—" : trimDec(s.stddev)),
          h("td", { class: "num" }, s.mean === null ? "—" : trimDec(s.mean)),
          h("td", { class: "num" }, s.change_pct === null ? "—" : `${s.change_pct} %`),
          h("td", { class: "num" }, String(s.samples)),
        ),
      );
      $("ranking-rows").replaceChildren(
        ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, `Nothing ranked in ${p.group} yet (σ needs a few minutes of trades).`))]),
      );
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Session: tokens live in sessionStorage (this tab only, so two tabs never rotate the same
  // refresh token); the access token is refreshed before it expires.

  const session = {
    email: null,
    access: null,
    refresh: null,
    exp: 0,
    timer: null,
    renewing: null,

    load() {
      try {
        const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
        if (s && s.refresh) Object.assign(this, { email: s.email, access: s.access, refresh: s.refresh, exp: s.exp });
      } catch (e) {
        /* no stored session */
      }
      if (this.refresh) this.schedule();
    },

    set(email, t) {
      this.email = email;
      this.access = t.access_token;
      this.refresh = t.refresh_token;
      this.exp = Date.now() + t.expires_in * 1000;
      try {
        sessionStorage.setItem(SESSION_KEY, JSON.stringify({ email, access: this.access, refresh: this.refresh, exp: this.exp }));
      } catch (e) {
        /* storage full or disabled: the session lasts as long as the page */
      }
      this.schedule();
    },

    clear() {
      Object.assign(this, { email: null, access: null, refresh: null, exp: 0 });
      clearTimeout(this.timer);
      try {
        sessionStorage.removeItem(SESSION_KEY);
      } catch (e) {
        /* nothing stored */
      }
    },

    schedule() {
      clearTimeout(this.timer);
      const left = this.exp - Date.now();
      this.timer = setTimeout(() => this.renew(), Math.max(1000, left - Math.min(60000, left / 5)));
    },

    async signIn(email, password) {
      const t = await api("/api/v1/auth/token", { method: "POST", body: { email, password } });
      this.set(email, t);
    },

    /** A new token pair from the refresh token; false (and signed out) when it is refused. */
    renew() {
      if (!this.refresh) return Promise.resolve(false);
      if (this.renewing) return this.renewing;
      this.renewing = (async () => {
        try {
          const t = await api("/api/v1/auth/refresh", { method: "POST", body: { refresh_token: this.refresh } });
          this.set(this.email, t);
          stream.auth();
          return true;
        } catch (e) {
          if (e.status === 401) {
            this.clear();
            alerts.signedOut("Your session ended; sign in again.");
          }
          return false;
        } finally {
          this.renewing = null;
        }
      })();
      return this.renewing;
    },

    async fresh() {
      if (this.refresh && Date.now() > this.exp - 5000) await this.renew();
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Alerts: sign in, create, list, pause, delete; triggers live from the stream, their delivery
  // state from the notifications API until every channel is final.

  const FINAL = new Set(["sent", "dead", "suppressed"]);

  const alerts = {
    triggers: new Map(), // trigger_id → { li, alertId, deliveries, done, since }
    list: [],

    init() {
      $("signin-form").addEventListener("submit", (e) => {
        e.preventDefault();
        this.signIn(false);
      });
      $("register-submit").addEventListener("click", () => this.signIn(true));
      $("signout").addEventListener("click", () => this.signOut());
      $("alert-form").addEventListener("submit", (e) => {
        e.preventDefault();
        this.create();
      });
      $("alert-condition").addEventListener("change", () => this.conditionChanged());
      $("alert-symbol").addEventListener("input", () => this.hint());
      $("alert-market").addEventListener("change", () => this.hint());
      $("alert-rearm").addEventListener("change", (e) => {
        $("alert-cooldown").disabled = !e.target.checked;
        $("alert-hysteresis").disabled = !e.target.checked;
      });
      this.conditionChanged();
      setInterval(() => session.access && this.load(), ALERTS_REFRESH_MS);
      setInterval(() => this.pollDeliveries(), DELIVERY_POLL_MS);
      if (session.refresh) this.signedIn();
    },

    async signIn(register) {
      const email = $("signin-email").value.trim();
      const password = $("signin-password").value;
      const msg = $("alerts-msg");
      if (!email || password.length < 10) {
        say(msg, "Enter an email and a password of at least 10 characters.", "error");
        (email ? $("signin-password") : $("signin-email")).focus();
        return;
      }
      const buttons = [$("signin-submit"), $("register-submit")];
      buttons.forEach((b) => (b.disabled = true));
      say(msg, register ? "Creating the account…" : "Signing in…", "info");
      try {
        if (register) await api("/api/v1/auth/register", { method: "POST", body: { email, password } });
        await session.signIn(email, password);
        $("signin-password").value = "";
        say(msg, register ? `Account created; signed in as ${email}.` : `Signed in as ${email}.`, "info");
        this.signedIn();
      } catch (e) {
        say(msg, `${register ? "Could not create the account" : "Could not sign in"}: ${e.message}`, "error");
      } finally {
        buttons.forEach((b) => (b.disabled = false));
      }
    },

    signedIn() {
      $("signin-form").hidden = true;
      $("signed-in").hidden = false;
      $("whoami").textContent = `Signed in as ${session.email}`;
      stream.wantAlerts = true;
      stream.auth();
      stream.sync();
      this.load().then(() => this.loadRecentTriggers());
    },

    async signOut() {
      const refresh = session.refresh;
      session.clear();
      if (refresh) api("/api/v1/auth/logout", { method: "POST", body: { refresh_token: refresh } }).catch(() => {});
      this.signedOut("Signed out.");
    },

    signedOut(text) {
      $("signin-form").hidden = false;
      $("signed-in").hidden = true;
      $("whoami").textContent = "Not signed in.";
      $("trigger-list").replaceChildren();
      this.triggers.clear();
      stream.wantAlerts = false;
      // A fresh connection carries no identity.
      stream.reconnect();
      say($("alerts-msg"), text, "info");
    },

    offerSymbols() {
      const list = $("symbol-list");
      const syms = [...new Set([...prices.rows.values()].map((r) => r.symbol))];
      list.replaceChildren(...syms.map((s) => h("option", { value: s })));
    },

    prefill(key) {
      const input = $("alert-symbol");
      if (input.value && document.activeElement === input) return;
      const [m, s] = splitKey(key);
      input.value = s;
      $("alert-market").value = m;
      this.hint();
    },

    conditionChanged() {
      const c = $("alert-condition").value;
      $("alert-interval-field").hidden = !c.startsWith("vwap_");
      $("alert-interval").disabled = !c.startsWith("vwap_");
      $("alert-window-field").hidden = c !== "move_pct";
      $("alert-window").disabled = c !== "move_pct";
      $("alert-threshold-label").textContent =
        c === "move_pct" ? "Threshold (move in %)" : c === "zscore" ? "Threshold (k, in σ)" : c.startsWith("vwap_") ? "Threshold (VWAP)" : "Threshold (price)";
      this.hint();
    },

    hint() {
      const c = $("alert-condition").value;
      const key = keyOf($("alert-market").value, $("alert-symbol").value.trim().toUpperCase());
      const p = prices.latest(key);
      $("alert-threshold-hint").textContent =
        c === "move_pct" || c === "zscore" ? "A positive decimal, e.g. 2.5." : p ? `Last price ${trimDec(p)}.` : "A decimal, e.g. 90000.5.";
    },

    async create() {
      const msg = $("alerts-msg");
      const symbol = $("alert-symbol").value.trim().toUpperCase();
      const threshold = $("alert-threshold").value.trim();
      const condition = $("alert-condition").value;
      const channels = ["websocket", "email"].filter((c) => $(`alert-ch-${c}`).checked);
      const bad = (el, text) => {
        el.setAttribute("aria-invalid", "true");
        say(msg, text, "error");
        el.focus();
      };
      for (const id of ["alert-symbol", "alert-threshold", "alert-cooldown", "alert-hysteresis"]) $(id).removeAttribute("aria-invalid");
      if (!/^[A-Z0-9_-]{1,40}$/.test(symbol)) return bad($("alert-symbol"), "Enter an instrument symbol, e.g. BTCUSDT.");
      if (!DECIMAL.test(threshold)) return bad($("alert-threshold"), "The threshold must be a decimal number such as 90000.5.");
      if (!channels.length) return bad($("alert-ch-websocket"), "Choose at least one way to be notified.");
      const body = { symbol, market: $("alert-market").value, condition, threshold, channels };
      if (condition.startsWith("vwap_")) body.interval = $("alert-interval").value;
      if (condition === "move_pct") body.window = $("alert-window").value;
      const note = $("alert-note").value.trim();
      if (note) body.note = note;
      if ($("alert-rearm").checked) {
        const cd = $("alert-cooldown").value.trim();
        const hy = $("alert-hysteresis").value.trim();
        if (!/^[0-9]+$/.test(cd)) return bad($("alert-cooldown"), "The cooldown is a whole number of seconds.");
        if (!DECIMAL.test(hy)) return bad($("alert-hysteresis"), "The hysteresis is a percentage such as 0.2.");
        body.rearm = { cooldown_ms: Number(cd) * 1000, hysteresis_pct: hy };
      }
      const btn = $("alert-create");
      btn.disabled = true;
      try {
        const a = await api("/api/v1/alerts", { method: "POST", body, auth: true });
        say(msg, `Alert #${a.id} created: ${a.symbol} ${CONDITION_TEXT[a.condition] || a.condition} ${a.threshold}.`, "info");
        $("alert-threshold").value = "";
        await this.load();
      } catch (e) {
        say(msg, `Could not create the alert: ${e.message}`, "error");
      } finally {
        btn.disabled = false;
      }
    },

    async load() {
      let page;
      try {
        page = await api("/api/v1/alerts?limit=100", { auth: true });
      } catch (e) {
        if (e.status !== 401) say($("alerts-msg"), `Could not load your alerts: ${e.message}`, "error");
        return;
      }
      this.list = page.items;
      const rows = page.items.map((a) => {
        const cond = `${CONDITION_TEXT[a.condition] || a.condition}${a.interval ? ` (${a.interval})` : ""}${a.window ? ` within ${a.window}` : ""}`;
        const status = a.status === "active" && !a.armed ? "active (re-arming)" : a.status;
        return h(
          "tr",
          { "data-alert": a.id, "data-status": a.status },
          h("td", {}, String(a.id)),
          h("th", { scope: "row" }, a.symbol, h("span", { class: "muted" }, a.market === "spot" ? "" : ` ${a.market}`)),
          h("td", {}, cond, a.note ? h("span", { class: "muted" }, ` · ${a.note}`) : null),
          h("td", { class: "num" }, a.threshold),
          h("td", { class: "status" }, status),
          h("td", {}, a.channels.join(", ")),
          h("td", {}, a.last_triggered_at ? fmtClock(a.last_triggered_at) : "never"),
          h(
            "td",
            {},
            a.status === "triggered"
              ? null
              : h("button", { type: "button", "aria-label": `${a.status === "paused" ? "Resume" : "Pause"} alert #${a.id}`, onclick: () => this.pause(a) }, a.status === "paused" ? "Resume" : "Pause"),
            " ",
            h("button", { type: "button", class: "danger", "aria-label": `Delete alert #${a.id}`, onclick: (e) => this.remove(a, e.target) }, "Delete"),
          ),
        );
      });
      $("alert-rows").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No alerts yet."))]));
    },

    async pause(a) {
      try {
        await api(`/api/v1/alerts/${a.id}`, { method: "PATCH", body: { status: a.status === "paused" ? "active" : "paused" }, auth: true });
        await this.load();
      } catch (e) {
        say($("alerts-msg"), `Could not change alert #${a.id}: ${e.message}`, "error");
      }
    },

    async remove(a, btn) {
      btn.disabled = true;
      try {
        await api(`/api/v1/alerts/${a.id}`, { method: "DELETE", auth: true });
        say($("alerts-msg"), `Alert #${a.id} deleted.`, "info");
        for (const t of this.triggers.values()) if (t.alertId === a.id) t.done = true;
        await this.load();
        $("alert-create").focus();
      } catch (e) {
        btn.disabled = false;
        say($("alerts-msg"), `Could not delete alert #${a.id}: ${e.message}`, "error");
      }
    },

    /** A trigger from the stream (`live`) or from the notifications of an earlier one. */
    onTrigger(d, live) {
      if (this.triggers.has(d.trigger_id)) return;
      const deliveries = h("span", { class: "deliveries" }, "delivery: checking…");
      const li = h(
        "li",
        { class: "fired", "data-trigger": d.trigger_id, "data-alert": d.alert_id },
        h("time", { datetime: new Date(d.triggered_at).toISOString() }, fmtClock(d.triggered_at)),
        " ",
        h("strong", {}, `Alert #${d.alert_id}`),
        ` ${d.symbol}${d.market && d.market !== "spot" ? ` (${d.market})` : ""} ${CONDITION_TEXT[d.condition] || d.condition} ${d.threshold}: `,
        `trade ${d.trade_id} at ${trimDec(d.price)}`,
        d.observed && cmpDec(d.observed, d.price) !== 0 ? ` (observed ${trimDec(d.observed)})` : "",
        live ? "" : h("span", { class: "muted" }, " · earlier"),
        deliveries,
      );
      const list = $("trigger-list");
      list.prepend(li);
      while (list.children.length > 50) list.lastElementChild.remove();
      this.triggers.set(d.trigger_id, { li, el: deliveries, alertId: d.alert_id, done: false, since: Date.now() });
      if (live) this.load();
      this.pollDeliveries();
    },

    async loadRecentTriggers() {
      const fired = this.list.filter((a) => a.last_triggered_at).sort((a, b) => a.last_triggered_at - b.last_triggered_at).slice(-5);
      for (const a of fired) {
        try {
          const n = await api(`/api/v1/alerts/${a.id}/notifications?limit=3`, { auth: true });
          for (const t of [...n.items].reverse()) {
            this.onTrigger({ ...t, alert_id: a.id, symbol: a.symbol, market: a.market, condition: a.condition, threshold: a.threshold }, false);
            this.showDeliveries(t.trigger_id, t.deliveries);
          }
        } catch (e) {
          /* shown on the next refresh */
        }
      }
    },

    /** Delivery state of every trigger not yet final, one notifications request per alert. */
    async pollDeliveries() {
      if (this.polling || !session.access) return;
      const alertIds = new Set();
      for (const t of this.triggers.values()) {
        if (!t.done && Date.now() - t.since > 600000) t.done = true;
        if (!t.done) alertIds.add(t.alertId);
      }
      if (!alertIds.size) return;
      this.polling = true;
      try {
        for (const id of alertIds) {
          try {
            const n = await api(`/api/v1/alerts/${id}/notifications?limit=20`, { auth: true });
            for (const t of n.items) this.showDeliveries(t.trigger_id, t.deliveries);
          } catch (e) {
            if (e.status === 404) for (const t of this.triggers.values()) if (t.alertId === id) t.done = true;
          }
        }
      } finally {
        this.polling = false;
      }
    },

    showDeliveries(triggerId, deliveries) {
      const t = this.triggers.get(triggerId);
      if (!t) return;
      const parts = [...deliveries]
        .sort((a, b) => a.channel.localeCompare(b.channel))
        .map((d) => {
          const extra = [];
          if (d.attempts > 1 || (d.state === "pending" && d.attempts > 0)) extra.push(`${d.attempts} attempts`);
          if (d.sent_at) extra.push(`at ${fmtClock(d.sent_at)}`);
          if (d.last_error && d.state !== "sent") extra.push(d.last_error);
          return h(
            "span",
            { class: "delivery", "data-channel": d.channel, "data-state": d.state },
            `${d.channel}: `,
            h("span", { class: `state-${d.state}` }, d.state),
            extra.length ? ` (${extra.join(", ")})` : "",
          );
        });
      const out = [];
      parts.forEach((p, i) => out.push(i ? " · " : "", p));
      t.el.replaceChildren(...(out.length ? out : ["no delivery channels"]));
      t.done = deliveries.every((d) => FINAL.has(d.state));
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Cluster: nodes, heartbeats, slices, epoch, feed health, reconciliation lag; changes between
  // two polls become events (a node dying, its slice moving).

  const cluster = {
    prev: null,
    answering: null,

    async poll() {
      let c;
      try {
        c = await api("/api/v1/cluster", { timeout: 5000 });
      } catch (e) {
        $("cluster-updated").textContent = `Cluster view unavailable (${e.message}); showing the last one.`;
        $("cluster-updated").className = "bad";
        return;
      }
      $("cluster-updated").textContent = `as of ${fmtClock(Date.now())}`;
      $("cluster-updated").className = "muted";
      this.render(c);
      if (this.prev) this.diff(this.prev, c);
      else
        this.event(
          "",
          `Watching since ${fmtClock(Date.now())}: ${c.nodes.filter((n) => n.alive).length} of ${c.nodes.length} nodes alive, epoch ${c.epoch}, slices ${c.nodes.map((n) => `${n.node_id} ${n.slice_size}`).join(", ")}.`,
        );
      this.prev = c;
    },

    render(c) {
      const item = (k, v, id) => h("div", {}, h("dt", {}, k), h("dd", id ? { id } : {}, v));
      const f = c.feed;
      const r = c.reconcile;
      const items = [
        item("Assignment epoch", String(c.epoch), "cluster-epoch"),
        item("Scheduler leader", c.leader ? `${c.leader.holder} (term ${c.leader.term})` : "none (takeover in progress)"),
        item("Nodes alive", `${c.nodes.filter((n) => n.alive).length} of ${c.nodes.length}`, "cluster-alive"),
        item("Instruments", `${c.instruments}${c.unassigned ? ` (${c.unassigned} unassigned)` : ", all assigned"}`),
      ];
      if (f) items.push(item(`Feed of ${this.answering || "this node"}`, feedText(f)));
      if (r) {
        items.push(
          item("Reconciliation", `${r.started} of ${r.instruments} instruments confirmed`),
          item("Reconciliation lag", r.max_lag_ms === null ? "not started" : `max ${fmtAge(r.max_lag_ms)} · median ${fmtAge(r.p50_lag_ms)}${r.behind_2m ? ` · ${r.behind_2m} over 2 min` : ""}`),
        );
      }
      $("cluster-summary").replaceChildren(...items);

      const before = new Map((this.prev ? this.prev.nodes : []).map((n) => [n.node_id, n]));
      const nodes = [...c.nodes].sort((a, b) => a.node_id.localeCompare(b.node_id));
      $("node-rows").replaceChildren(
        ...nodes.map((n) => {
          const p = before.get(n.node_id);
          const delta = p && p.slice_size !== n.slice_size ? n.slice_size - p.slice_size : 0;
          const feed = n.feed ? feedText(n.feed) : n.node_id === this.answering && f ? feedText(f) : "—";
          return h(
            "tr",
            { class: n.alive ? "" : "dead", "data-node": n.node_id, "data-alive": String(n.alive), "data-slice": String(n.slice_size) },
            h("th", { scope: "row" }, n.node_id, n.node_id === this.answering ? h("span", { class: "muted" }, " (this page)") : null),
            h("td", {}, h("span", { class: `badge ${n.alive ? "alive-badge" : "dead-badge"}` }, n.alive ? "✔ alive" : "✖ dead")),
            h(
              "td",
              { class: "num slice" },
              String(n.slice_size),
              delta ? h("span", { class: `delta ${delta > 0 ? "ok" : "bad"}`, title: `was ${p.slice_size}` }, `${delta > 0 ? "▲ +" : "▼ −"}${Math.abs(delta)}`) : null,
            ),
            h("td", { class: "num" }, fmtAge(n.heartbeat_age_ms)),
            h("td", {}, feed),
            h("td", {}, n.addr || "—"),
            h("td", {}, n.started_at ? fmtDateTime(n.started_at) : "—"),
          );
        }),
      );
    },

    diff(a, b) {
      const events = [];
      const was = new Map(a.nodes.map((n) => [n.node_id, n]));
      const now = new Map(b.nodes.map((n) => [n.node_id, n]));
      for (const [id, n] of now) {
        const p = was.get(id);
        if (!p) events.push(["", `Node ${id} joined.`]);
        else if (p.alive && !n.alive) events.push(["bad", `Node ${id} is dead: no heartbeat for ${fmtAge(n.heartbeat_age_ms)}.`]);
        else if (!p.alive && n.alive) events.push(["", `Node ${id} is alive again.`]);
      }
      for (const id of was.keys()) if (!now.has(id)) events.push(["bad", `Node ${id} left the registry.`]);
      if (a.epoch !== b.epoch) events.push(["", `Assignment epoch ${a.epoch} → ${b.epoch}.`]);
      const moves = [];
      for (const id of new Set([...was.keys(), ...now.keys()])) {
        const x = was.get(id)?.slice_size ?? 0;
        const y = now.get(id)?.slice_size ?? 0;
        if (x !== y) moves.push(`${id} ${x} → ${y}`);
      }
      if (moves.length) events.push(["move", `Slice moved: ${moves.join(", ")}.`]);
      const la = a.leader ? `${a.leader.holder}/${a.leader.term}` : "";
      const lb = b.leader ? `${b.leader.holder}/${b.leader.term}` : "";
      if (la !== lb) events.push(["", b.leader ? `Scheduler leader: ${b.leader.holder} (term ${b.leader.term}).` : "No scheduler leader."]);
      for (const [cls, text] of events) this.event(cls, text);
    },

    event(cls, text) {
      const list = $("cluster-events");
      list.prepend(h("li", { class: cls }, h("time", {}, fmtClock(Date.now())), " ", text));
      while (list.children.length > 50) list.lastElementChild.remove();
    },

    async reconcile() {
      let rows;
      try {
        rows = await api("/api/v1/cluster/reconcile", { timeout: 5000 });
      } catch (e) {
        return;
      }
      const worst = [...rows].sort((a, b) => (b.lag_ms ?? Infinity) - (a.lag_ms ?? Infinity)).slice(0, 8);
      $("reconcile-rows").replaceChildren(
        ...(worst.length
          ? worst.map((l) =>
              h(
                "tr",
                {},
                h("th", { scope: "row" }, l.key),
                h("td", { class: "num" }, l.lag_ms === null ? "not started" : fmtAge(l.lag_ms)),
                h("td", {}, l.validated_through ? fmtClock(l.validated_through) : "—"),
                h("td", { class: "num" }, String(l.validated_trades)),
              ),
            )
          : [h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No reconciliation jobs yet."))]),
      );
    },
  };

  /** Feed health, whichever shape a node reports: a summary or a list of connections. */
  function feedText(f) {
    if (Array.isArray(f)) {
      const up = f.filter((c) => c.connected || c.healthy || c.state === "connected").length;
      return `${up} of ${f.length} connections up`;
    }
    if (typeof f === "object" && f !== null && "connections" in f) {
      const conns = Array.isArray(f.connections) ? f.connections.length : f.connections;
      const up = "connected" in f ? f.connected : conns;
      const age = f.max_last_frame_age_ms;
      return `${up} of ${conns} connections up${age !== null && age !== undefined ? ` · last frame ${fmtAge(age)} ago` : ""}`;
    }
    return "—";
  }

  // ---------------------------------------------------------------------------------------------
  // Start

  async function whoServes() {
    try {
      const n = await api("/api/v1/node");
      cluster.answering = n.node_id;
      $("node-id").textContent = n.node_id;
    } catch (e) {
      setTimeout(whoServes, 2000);
    }
  }

  async function readiness() {
    const el = $("ready");
    try {
      const res = await fetch("/readyz", { signal: AbortSignal.timeout(5000) });
      const j = await res.json();
      const failing = Object.entries(j.checks || {})
        .filter(([, v]) => v !== "ok" && v !== true)
        .map(([k, v]) => `${k}: ${v}`);
      el.textContent = res.ok ? "ready" : `not ready${failing.length ? ` (${failing.join(", ")})` : ""}`;
      el.className = res.ok ? "ok" : "bad";
    } catch (e) {
      el.textContent = "node unreachable";
      el.className = "bad";
    }
  }

  function every(ms, fn) {
    fn();
    setInterval(fn, ms);
  }

  function start() {
    session.load();
    chart.init();
    ranking.init();
    alerts.init();
    $("stale-after").textContent = String(STALE_MS / 1000);
    $("prices-next").addEventListener("click", () => {
      prices.cursors[prices.page + 1] = prices.next;
      prices.page += 1;
      prices.load().catch(() => {});
    });
    $("prices-prev").addEventListener("click", () => {
      prices.page = Math.max(0, prices.page - 1);
      prices.load().catch(() => {});
    });
    whoServes();
    every(5000, readiness);
    stream.connect();
    // The instrument list changes rarely (listings, delistings); prices come from the stream.
    // Until the first instruments exist (a cluster still syncing), look again every few seconds.
    const loadPrices = () =>
      prices
        .load()
        .catch((e) => {
          $("price-rows").replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "bad" }, `Could not load instruments: ${e.message}`)));
        })
        .finally(() => setTimeout(loadPrices, prices.rows.size ? 60000 : 3000));
    loadPrices();
    ranking.load();
    every(1000, () => prices.tick());
    every(CLUSTER_POLL_MS, () => cluster.poll());
    every(RECONCILE_POLL_MS, () => cluster.reconcile());
  }

  // State a test (or a curious user in the console) can read; nothing here drives the page.
  window.pricefeed = { stream, prices, chart, alerts, cluster, cmpDec };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
