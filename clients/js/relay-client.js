// relay-client.js: the browser client of the relay. One ES module, no build step, no
// dependencies. Served by every relay at /client/relay-client.js.
//
//   import { RelayClient, PerfectNegotiation } from "/client/relay-client.js";
//   const client = RelayClient.app(location.origin, () => fetchToken());
//   await client.start();
//   const { session_id, ice_servers } = await client.request("robot-1");
//   const pc = new RTCPeerConnection({ iceServers: ice_servers.iceServers });
//   new PerfectNegotiation(client, session_id, pc, { polite: true });
//
// What it does by itself: hello, seq and ack; every message numbered with cseq and kept until
// the relay acks it, sent again after a resume; repeated seq and peer_cseq dropped; resume with
// resume_token and last_seq after a drop, with backoff and jitter, honouring Retry-After and
// go_away; the app token refreshed with `auth` before exp; 401/403 and close 4002 stop it with
// RelayRefusedError / RelayClosedError; and when the WebSocket cannot open, the same link over
// Server-Sent Events + POST /api/link/send, or long-polling when event streams fail too.

/**
 * @typedef {Record<string, any>} RelayMessage  A message as the relay sends it (contract §3).
 * @typedef {"websocket" | "sse" | "poll"} Transport
 * @typedef {() => string | Promise<string>} TokenProvider
 * @typedef {object} RelayClientOptions
 * @property {Transport[]} [transports]  Tried in this order (default all three).
 * @property {number} [initialBackoffMs]  First delay before connecting again (default 250), doubled per failure.
 * @property {number} [maxBackoffMs]  Largest delay (default 30000).
 * @property {number} [refreshMarginS]  An app token is refreshed this many seconds before exp (default 60).
 * @property {number} [ackEvery]  Acknowledge after this many messages (default 16).
 * @property {{burst: number, perSecond: number}} [pace]  What the client sends is paced to stay under
 *   the relay's per-link limit (contract §5: 50 in a burst, 10/s by default), with a margin (default 40, 9/s).
 * @property {(line: string) => void} [log]  Where the client says what it does (default: nowhere).
 */

/** The relay refused the credentials (401, 403): trying again will not help. */
export class RelayRefusedError extends Error {
  /** @param {number} status @param {string} detail */
  constructor(status, detail) {
    super(`relay refused the link (${status}): ${detail}`);
    this.name = "RelayRefusedError";
    this.status = status;
    this.detail = detail;
  }
}

/** The link ended for good: closed by the client, or replaced by a newer connection (4002). */
export class RelayClosedError extends Error {
  /** @param {number} [code] @param {string} [reason] */
  constructor(code, reason = "") {
    super(code ? `relay link closed (${code}): ${reason}` : "relay link closed");
    this.name = "RelayClosedError";
    this.code = code;
    this.reason = reason;
  }
}

/** The relay answered a request with an `error` message. */
export class RelayError extends Error {
  /** @param {RelayMessage} message */
  constructor(message) {
    super(`${message.code}: ${message.message}`);
    this.name = "RelayError";
    this.code = message.code;
    this.relayMessage = message;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const hex = (bytes) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
const randomHex = (count) => hex(crypto.getRandomValues(new Uint8Array(count)));

/** The `exp` of a JWT (unverified: only to know when to refresh it), or null. */
export function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Contract §1.2: device_id, ts, a fresh nonce and sig = hex(HMAC-SHA256(secret, id\nts\nnonce)). */
export async function signedDeviceQuery(deviceId, secret, now = Date.now() / 1000) {
  const ts = String(Math.floor(now));
  const nonce = randomHex(16);
  const encoder = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const sig = hex(new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(`${deviceId}\n${ts}\n${nonce}`))));
  return `device_id=${encodeURIComponent(deviceId)}&ts=${ts}&nonce=${nonce}&sig=${sig}`;
}

/** Why a connect attempt failed, and how long to wait before the next one. */
class Retry extends Error {
  /** @param {string} why @param {number | null} [delayMs] */
  constructor(why, delayMs = null) {
    super(why);
    this.delayMs = delayMs;
  }
}

/**
 * One link to the relay, as an app (or a device). Listen with `on(type, handler)` (`"*"` for
 * every message), or await `next(type)`. Besides the relay's messages it emits
 * `{type: "connected", hello, transport}` on every hello and `{type: "link_reset"}` when the
 * link could not be resumed (its sessions are gone), and `{type: "stopped", error}` at the end.
 */
export class RelayClient {
  /**
   * @param {string} baseUrl  The relay's origin (http(s):// or ws(s)://), optionally with a path prefix.
   * @param {{ token?: TokenProvider, device?: { id: string, secret: string } }} identity
   * @param {RelayClientOptions} [options]
   */
  constructor(baseUrl, identity, options = {}) {
    const url = new URL(baseUrl, typeof location === "undefined" ? undefined : location.href);
    const secure = url.protocol === "https:" || url.protocol === "wss:";
    const prefix = url.pathname.replace(/\/+$/, "");
    this.httpBase = `${secure ? "https" : "http"}://${url.host}${prefix}`;
    this.wsBase = `${secure ? "wss" : "ws"}://${url.host}${prefix}`;
    this.identity = identity;
    this.options = { transports: ["websocket", "sse", "poll"], initialBackoffMs: 250, maxBackoffMs: 30000, refreshMarginS: 60, ackEvery: 16, pace: { burst: 40, perSecond: 9 }, log: () => {}, ...options };
    /** @type {RelayMessage | null} */
    this.hello = null;
    /** @type {Transport | null} */
    this.transport = null;
    this.connects = 0;
    this.lastSeq = 0;
    this._ackedSeq = 0;
    this._cseq = 0;
    /** @type {{cseq: number, message: RelayMessage}[]} */
    this._unacked = [];
    this._peerCseqs = new Map();
    this._handlers = new Map();
    this._acknowledging = [];
    this._outgoing = []; // messages waiting for the pace, oldest first
    this._tokens = this.options.pace.burst;
    this._tokensAt = Date.now();
    this._pacing = null;
    this._waiting = new Map();
    this._closing = false;
    this._error = null;
    this._current = null; // the open transport: { send(messages), close(), abort() }
    this._httpOnly = false;
    this._goAway = null;
    this._tokenExpiry = null;
    this._refreshTimer = null;
  }

  /** An app: `token` returns a current JWT (called at each connect and before exp). */
  static app(baseUrl, token, options) {
    return new RelayClient(baseUrl, { token }, options);
  }

  /** A device: each connect is signed with `secret` and a fresh nonce (needs a secure context). */
  static device(baseUrl, id, secret, options) {
    return new RelayClient(baseUrl, { device: { id, secret } }, options);
  }

  /** Why the client stopped (RelayRefusedError, RelayClosedError), or null while it runs. */
  get error() {
    return this._error;
  }

  /** Messages sent and not yet acked by the relay. */
  get unacked() {
    return this._unacked.length;
  }

  /** Resolves once the relay has acked everything sent so far. */
  acknowledged() {
    if (!this._unacked.length || this._error) return Promise.resolve();
    return new Promise((resolve) => this._acknowledging.push(resolve));
  }

  /** Connects and keeps the link up; resolves on the first hello, rejects with the refusal. */
  start() {
    if (!this._started) {
      this._started = new Promise((resolve, reject) => {
        this._onFirstHello = resolve;
        this._onStop = reject;
      });
      this._run();
    }
    return this._started;
  }

  /** Ends the link: nothing is resumed. */
  close() {
    this._closing = true;
    clearTimeout(this._refreshTimer);
    if (this._current) this._current.close();
    this._stop(new RelayClosedError());
  }

  /** Drops the transport without a word, as a lost network does: the link resumes. */
  dropConnection() {
    if (this._current) this._current.abort();
  }

  /**
   * Calls `handler` for every message of `type` ("*": all). Returns a function that unsubscribes.
   * @param {string} type @param {(message: RelayMessage) => void} handler
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type).delete(handler);
  }

  /**
   * The next message of one of `types` (any when empty), within `timeoutMs`.
   * @param {string | string[]} [types] @param {number} [timeoutMs]
   * @returns {Promise<RelayMessage>}
   */
  next(types = [], timeoutMs = 15000) {
    const wanted = Array.isArray(types) ? types : [types];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new Error(`no ${wanted.join("/") || "message"} within ${timeoutMs} ms`)); }, timeoutMs);
      const off = this.on("*", (message) => {
        if (message.type === "stopped" && !wanted.includes("stopped")) { clearTimeout(timer); off(); reject(message.error); return; }
        if (wanted.length && !wanted.includes(message.type)) return;
        clearTimeout(timer);
        off();
        resolve(message);
      });
    });
  }

  /**
   * Numbers `message` with the next cseq and sends it now (or with the next resume); it is kept
   * until the relay acks it. Returns its cseq.
   * @param {RelayMessage} message
   */
  send(message) {
    const numbered = { ...message, cseq: ++this._cseq };
    this._unacked.push({ cseq: numbered.cseq, message: numbered });
    if (this._current) this._transmit([numbered]);
    return numbered.cseq;
  }

  /**
   * Asks for a session with a device (apps): resolves with `webrtc_credentials`, rejects with
   * the relay's error.
   * @param {string} deviceId @param {{ttl?: number, metadata?: object, timeoutMs?: number}} [options]
   */
  request(deviceId, { ttl, metadata, timeoutMs = 15000 } = {}) {
    if (this._error) return Promise.reject(this._error);
    const requestId = randomHex(8);
    const message = { type: "webrtc_request", device_id: deviceId, request_id: requestId };
    if (ttl !== undefined) message.ttl = ttl;
    if (metadata !== undefined) message.metadata = metadata;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this._waiting.delete(requestId); reject(new Error("no answer to webrtc_request")); }, timeoutMs);
      this._waiting.set(requestId, (answer) => {
        clearTimeout(timer);
        this._waiting.delete(requestId);
        if (answer instanceof Error) reject(answer);
        else if (answer.type === "error") reject(new RelayError(answer));
        else resolve(answer);
      });
      this.send(message);
    });
  }

  sendOffer(sessionId, sdp) { return this.send({ type: "webrtc_offer", session_id: sessionId, sdp }); }
  sendAnswer(sessionId, sdp) { return this.send({ type: "webrtc_answer", session_id: sessionId, sdp }); }
  /** One candidate (`RTCIceCandidate.toJSON()`), or null for the end of candidates. */
  sendIce(sessionId, candidate) {
    return this.send(candidate ? { type: "webrtc_ice", session_id: sessionId, candidate } : { type: "webrtc_ice", session_id: sessionId, candidate: null, complete: true });
  }
  closeSession(sessionId, reason = "normal") { return this.send({ type: "webrtc_close", session_id: sessionId, reason }); }
  reject(sessionId, reason = "busy") { return this.send({ type: "webrtc_reject", session_id: sessionId, reason }); }
  watch(deviceIds) { return this.send({ type: "watch", device_ids: deviceIds }); }

  // The link

  async _run() {
    let failures = 0;
    while (!this._closing) {
      let delay = null;
      try {
        const transports = this.options.transports.filter((name) => !(this._httpOnly && name === "websocket"));
        const ended = await this._connectAndServe(transports);
        if (ended) failures = 0;
      } catch (error) {
        if (error instanceof RelayRefusedError || error instanceof RelayClosedError) { this._stop(error); return; }
        this.options.log(`connect failed (${error.message}); retrying`);
        if (error instanceof Retry) delay = error.delayMs;
      }
      this._current = null;
      if (this._closing) return;
      if (this._goAway !== null) { delay = this._goAway; this._goAway = null; }
      if (delay === null) {
        delay = Math.min(this.options.maxBackoffMs, this.options.initialBackoffMs * 2 ** Math.min(failures, 20)) * (0.5 + Math.random() / 2);
        failures += 1;
      }
      await sleep(delay);
    }
  }

  /** Opens the link on the first transport that works and serves it until it ends. */
  async _connectAndServe(transports) {
    if (transports[0] === "websocket") {
      const opened = await this._openWebSocket();
      if (opened) return opened.ended;
      // The WebSocket did not open, and a browser does not say why: ask over HTTP, which does.
      if (transports.length === 1) throw new Retry("the WebSocket did not open");
      transports = transports.slice(1);
    }
    const hello = await this._openHTTPLink();
    this._httpOnly = true;
    if (transports[0] === "sse") {
      const ended = await this._serveEvents(hello);
      if (ended !== null) return ended;
      this.options.log("event streams do not get through; long-polling");
      if (transports.length === 1) throw new Retry("the event stream did not open");
      this.options.transports = this.options.transports.filter((name) => name !== "sse");
    }
    return this._servePolls(hello);
  }

  /** The query of a connect: credentials for a device or a browser app, and the resume. */
  async _credentials() {
    const query = [];
    if (this.identity.device) query.push(await signedDeviceQuery(this.identity.device.id, this.identity.device.secret));
    let token = null;
    if (this.identity.token) {
      token = await this.identity.token();
      this._tokenExpiry = tokenExpiry(token);
    }
    return { query, token };
  }

  _resumeFields() {
    return this.hello ? { resume_token: this.hello.resume_token, last_seq: this.lastSeq } : null;
  }

  /** Resolves `{ended}` (a promise) once open, or null when the socket never opened. */
  async _openWebSocket() {
    const { query, token } = await this._credentials();
    if (token) query.push("token=" + encodeURIComponent(token));
    const resume = this._resumeFields();
    if (resume) query.push(`resume_token=${encodeURIComponent(resume.resume_token)}&last_seq=${resume.last_seq}`);
    const path = this.identity.device ? "/ws/device" : "/ws/app";
    // A reconnect_url naming only another node (no path) gets this client's endpoint; one that
    // is not a URL is ignored.
    let other = null;
    try { other = this._goAwayUrl ? new URL(this._goAwayUrl) : null; } catch { this._goAwayUrl = null; }
    const base = !other ? this.wsBase + path : other.pathname === "/" && !other.search ? other.origin.replace(/^http/, "ws") + path : this._goAwayUrl;
    this._goAwayUrl = null;
    let socket;
    try {
      socket = new WebSocket(base + (base.includes("?") ? "&" : "?") + query.join("&"));
    } catch {
      return null;
    }
    return new Promise((resolve) => {
      let opened = false;
      let finish;
      const ended = new Promise((done, fail) => { finish = { done, fail }; });
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (!opened) {
          if (message.type !== "hello") return;
          opened = true;
          this._begin(message, "websocket", {
            send: (messages) => { if (socket.readyState === WebSocket.OPEN) for (const item of messages) socket.send(JSON.stringify(item)); },
            close: () => socket.close(1000),
            abort: () => socket.close(4000, "dropped"),
          });
          resolve({ ended });
          return;
        }
        this._receive(message);
      };
      socket.onclose = (event) => {
        if (!opened) { resolve(null); return; }
        if (event.code === 4002) finish.fail(new RelayClosedError(4002, event.reason || "replaced by a newer connection"));
        else { this.options.log(`socket ended (${event.code}); resuming`); finish.done(true); }
      };
    });
  }

  /** POST /api/link (opens or resumes): the hello, or why not (401/403 stop, 429/503 wait). */
  async _openHTTPLink() {
    const { query, token } = await this._credentials();
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let answer;
    try {
      answer = await fetch(this.httpBase + "/api/link" + (query.length ? "?" + query.join("&") : ""), {
        method: "POST", headers, body: JSON.stringify(this._resumeFields() || {}), cache: "no-store",
      });
    } catch (error) {
      throw new Retry(`the relay cannot be reached (${error.message})`);
    }
    const body = await answer.json().catch(() => ({}));
    if (answer.status === 401 || answer.status === 403) throw new RelayRefusedError(answer.status, body.detail || "");
    if (!answer.ok) {
      const after = Number(answer.headers.get("Retry-After"));
      throw new Retry(`connect refused (${answer.status} ${body.detail || ""})`, Number.isFinite(after) && after > 0 ? after * 1000 : null);
    }
    return body;
  }

  /**
   * The HTTP transports' way of sending: POST /api/link/send, one request at a time, carrying
   * everything queued meanwhile (parallel requests could arrive out of order, and a higher cseq
   * ahead of a lower one would make that one a duplicate). Errors come back on the link. After a
   * failed request nothing more goes on this link: the resume sends again what was not acked.
   */
  _httpSender(hello) {
    const queue = [];
    let busy = false;
    let broken = false;
    const flush = async () => {
      busy = true;
      while (queue.length && !broken) {
        const messages = queue.splice(0, 100);
        try {
          const answer = await fetch(this.httpBase + "/api/link/send", {
            method: "POST", headers: { "Content-Type": "application/json" }, cache: "no-store",
            body: JSON.stringify({ link_id: hello.link_id, resume_token: hello.resume_token, messages }),
          });
          if (!answer.ok) broken = true;
        } catch {
          broken = true;
        }
      }
      if (broken) queue.length = 0;
      busy = false;
    };
    return (messages) => {
      if (broken) return;
      queue.push(...messages);
      if (!busy) flush();
    };
  }

  /** Serves the link over an event stream; null when the stream never opened. */
  _serveEvents(hello) {
    return new Promise((resolve, reject) => {
      const url = `${this.httpBase}/api/link/events?link_id=${encodeURIComponent(hello.link_id)}&resume_token=${encodeURIComponent(hello.resume_token)}`;
      const source = new EventSource(url);
      let opened = false;
      const end = (value, error) => { source.close(); if (error) reject(error); else resolve(value); };
      source.onopen = () => {
        if (opened) return;
        opened = true;
        const send = this._httpSender(hello);
        this._begin(hello, "sse", { send, close: () => source.close(), abort: () => end(true) });
      };
      source.addEventListener("message", (event) => this._receive(JSON.parse(event.data)));
      source.addEventListener("close", (event) => {
        const { code, reason } = JSON.parse(event.data);
        if (code === 4002) end(null, new RelayClosedError(4002, reason));
        else { this.options.log(`event stream closed (${code}); resuming`); end(true); }
      });
      // EventSource reconnects by itself with Last-Event-ID; this client resumes its own way.
      source.onerror = () => {
        if (!opened) end(null);
        else { this.options.log("event stream dropped; resuming"); end(true); }
      };
    });
  }

  /** Serves the link by long-polling until a poll fails. */
  async _servePolls(hello) {
    let stopped = false;
    let controller = new AbortController();
    const send = this._httpSender(hello);
    this._begin(hello, "poll", {
      send,
      close: () => { stopped = true; controller.abort(); },
      abort: () => { stopped = true; controller.abort(); },
    });
    while (!stopped && !this._closing) {
      let answer;
      try {
        answer = await fetch(this.httpBase + "/api/link/poll", {
          method: "POST", headers: { "Content-Type": "application/json" }, cache: "no-store", signal: controller.signal,
          body: JSON.stringify({ link_id: hello.link_id, resume_token: hello.resume_token, messages: [], last_seq: this.lastSeq, wait: true, timeout_ms: 15000 }),
        });
      } catch {
        break;
      }
      if (!answer.ok) { this.options.log(`poll answered ${answer.status}; resuming`); break; }
      const { messages } = await answer.json();
      // One task per message, as a WebSocket or an event stream delivers them: code awaiting
      // one message (a request's credentials) can start listening for the next (its offer).
      for (const message of messages) {
        this._receive(message);
        await sleep(0);
      }
    }
    return true;
  }

  /** A hello arrived on `transport`: resume or restart the link's state, re-send what was not acked. */
  _begin(hello, transport, current) {
    if (hello.resumed) this._acked(hello.acked_cseq || 0);
    else if (this.hello) {
      this.options.log("the link could not be resumed; a new one starts");
      this.lastSeq = 0;
      this._ackedSeq = 0;
      this._acked(Infinity);
      this._peerCseqs.clear();
      for (const answer of [...this._waiting.values()]) answer(new Error("the link was reset"));
      this._emit({ type: "link_reset" });
    }
    this.hello = hello;
    this.transport = transport;
    this.connects += 1;
    this._current = current;
    // What was not acked goes first, in order: a higher cseq ahead of a lower one would make that
    // one a duplicate. What waited for the old transport is among it.
    this._outgoing = [];
    this._transmit(this._unacked.map((kept) => kept.message));
    this.options.log(`link ${hello.link_id} ${hello.resumed ? "resumed" : "opened"} over ${transport}`);
    this._emit({ type: "connected", hello, transport });
    if (this._onFirstHello) { this._onFirstHello(); this._onFirstHello = null; }
    this._scheduleRefresh();
  }

  _receive(message) {
    if (message.type === "ack" && message.seq === undefined) { this._acked(message.cseq || 0); return; }
    if (message.seq !== undefined) {
      if (message.seq <= this.lastSeq) return;
      this.lastSeq = message.seq;
      // The long poll acks with its own last_seq.
      if (this.transport !== "poll" && message.seq - this._ackedSeq >= this.options.ackEvery) {
        this._ackedSeq = message.seq;
        if (this._current) this._transmit([{ type: "ack", seq: message.seq }]);
      }
    }
    if (message.peer_cseq !== undefined && message.session_id) {
      if (message.peer_cseq <= (this._peerCseqs.get(message.session_id) || 0)) return;
      this._peerCseqs.set(message.session_id, message.peer_cseq);
    }
    if (message.type === "go_away") {
      this._goAway = message.reconnect_after_ms || 0;
      if (message.reconnect_url) this._goAwayUrl = message.reconnect_url;
      if (this._current) this._current.close();
    }
    if (message.type === "webrtc_close") this._peerCseqs.delete(message.session_id);
    const answer = message.request_id && this._waiting.get(message.request_id);
    if (answer && (message.type === "webrtc_credentials" || message.type === "error")) answer(message);
    this._emit(message);
  }

  /** Sends `messages` on the current transport as the pace allows, after what is waiting. */
  _transmit(messages) {
    this._outgoing.push(...messages);
    if (this._pacing || !this._current) return;
    const { burst, perSecond } = this.options.pace;
    const ready = [];
    while (this._outgoing.length) {
      const now = Date.now();
      this._tokens = Math.min(burst, this._tokens + ((now - this._tokensAt) / 1000) * perSecond);
      this._tokensAt = now;
      if (this._tokens < 1) {
        this._pacing = setTimeout(() => { this._pacing = null; this._transmit([]); }, ((1 - this._tokens) / perSecond) * 1000);
        break;
      }
      this._tokens -= 1;
      ready.push(this._outgoing.shift());
    }
    if (ready.length) this._current.send(ready);
  }

  _acked(cseq) {
    while (this._unacked.length && this._unacked[0].cseq <= cseq) this._unacked.shift();
    if (!this._unacked.length) for (const resolve of this._acknowledging.splice(0)) resolve();
  }

  _emit(message) {
    for (const type of [message.type, "*"]) {
      for (const handler of this._handlers.get(type) || []) {
        try { handler(message); } catch (error) { console.error("relay-client handler:", error); }
      }
    }
  }

  _stop(error) {
    if (this._error) return;
    this._error = error;
    clearTimeout(this._refreshTimer);
    for (const answer of [...this._waiting.values()]) answer(error);
    for (const resolve of this._acknowledging.splice(0)) resolve();
    if (this._onStop) { this._onStop(error); this._onStop = null; this._onFirstHello = null; }
    this._emit({ type: "stopped", error });
  }

  /** An app's token goes again with `auth` refreshMarginS before its exp. */
  _scheduleRefresh() {
    if (!this.identity.token || this._tokenExpiry === null) return;
    clearTimeout(this._refreshTimer);
    const wait = Math.max(1, this._tokenExpiry - Date.now() / 1000 - this.options.refreshMarginS);
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this.identity.token();
        this._tokenExpiry = tokenExpiry(token);
        this.send({ type: "auth", token });
        this.options.log("token refreshed");
      } catch (error) {
        this.options.log(`token provider failed (${error.message})`);
      }
      if (!this._closing) this._scheduleRefresh();
    }, wait * 1000);
  }
}

/**
 * Perfect Negotiation (W3C WebRTC §10.6) for one session, bound to an RTCPeerConnection:
 * offers on `negotiationneeded`, candidates trickled both ways, glare resolved by the polite
 * side rolling back, an ICE restart when the relay sends new ICE servers
 * (`ice_servers_refresh`) or when ICE fails. The app is the polite side.
 */
export class PerfectNegotiation {
  /**
   * @param {RelayClient} client @param {string} sessionId @param {RTCPeerConnection} pc
   * @param {{polite?: boolean, onError?: (error: Error) => void}} [options]
   */
  constructor(client, sessionId, pc, { polite = true, onError = (error) => console.warn("negotiation:", error) } = {}) {
    this.client = client;
    this.sessionId = sessionId;
    this.pc = pc;
    this.polite = polite;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.restarts = 0;
    const mine = (handler) => (message) => { if (message.session_id === sessionId) Promise.resolve(handler(message)).catch(onError); };
    this._off = [
      client.on("webrtc_offer", mine((message) => this._describe({ type: "offer", sdp: message.sdp }))),
      client.on("webrtc_answer", mine((message) => this._describe({ type: "answer", sdp: message.sdp }))),
      client.on("webrtc_ice", mine((message) => this._candidates(message))),
      client.on("ice_servers_refresh", mine((message) => {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: message.ice_servers.iceServers });
        this.restartIce();
      })),
      client.on("webrtc_close", mine(() => this.close())),
    ];
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        client.sendOffer(sessionId, pc.localDescription.sdp);
      } catch (error) {
        onError(error);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => client.sendIce(sessionId, candidate ? candidate.toJSON() : null);
    pc.oniceconnectionstatechange = () => { if (pc.iceConnectionState === "failed") this.restartIce(); };
  }

  /** Restarts ICE: new credentials and candidates, through a new offer. */
  restartIce() {
    this.restarts += 1;
    this.pc.restartIce();
  }

  /** Stops listening (the peer connection is closed). */
  close() {
    for (const off of this._off) off();
    this._off = [];
    if (this.pc.signalingState !== "closed") this.pc.close();
  }

  async _describe(description) {
    const pc = this.pc;
    const collision = description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    await pc.setRemoteDescription(description); // a polite peer rolls back its own offer implicitly
    if (description.type === "offer") {
      await pc.setLocalDescription();
      this.client.sendAnswer(this.sessionId, pc.localDescription.sdp);
    }
  }

  async _candidates(message) {
    const list = message.candidates || [message.candidate];
    for (const candidate of list) {
      try {
        await this.pc.addIceCandidate(candidate || undefined);
      } catch (error) {
        if (!this.ignoreOffer) throw error;
      }
    }
  }
}
