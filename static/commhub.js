/**
 * commhub.js: a small, dependency-free browser client for the commhub audio SFU.
 *
 * Speaks protocol version 1 of the commhub WebSocket signaling (see docs/signaling.md) and
 * manages the two peer connections every participant has:
 *
 *  - the *publish* connection: this client offers its microphone track (sendonly) and the server
 *    answers with `publish_answer`;
 *  - the *subscribe* connection: the server is always the offerer (`subscribe_offer` carrying a
 *    `revision`); this client answers with `subscribe_answer` and the same revision. Each remote
 *    participant's audio arrives as its own track whose MediaStream id is the participant id.
 *
 * ICE candidates trickle both ways (`ice_candidate` with `target` "publish" or "subscribe").
 * A `ping` is sent every `keepalive_secs` announced in `welcome`.
 *
 * Usage:
 *
 *     import { CommhubClient } from '/commhub.js';
 *     const client = new CommhubClient('wss://example.org/ws');
 *     client.addEventListener('track', (e) => {
 *       const audio = new Audio();
 *       audio.srcObject = e.detail.stream;   // e.detail.participantId === e.detail.stream.id
 *       audio.play();
 *     });
 *     client.addEventListener('audio_levels', (e) => console.log(e.detail.levels));
 *     const joined = await client.join({ room: 'r1', displayName: 'Ann', role: 'agent' });
 *     const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
 *     await client.publish(mic);
 *     // ...
 *     await client.leave();   // the socket stays open; join() may be called again
 *     client.close();         // ends everything
 *
 * Events (all are CustomEvents; the server message is in `event.detail`):
 *
 *  - one event per server message type, named after it: `welcome`, `joined`,
 *    `participant_joined`, `participant_updated`, `participant_left`, `publish_answer`,
 *    `subscribe_offer`, `ice_candidate`, `audio_levels`, `active_speaker`, `left`, `pong`, `bye`,
 *    `error` (detail: `{type:'error', code, message, in_reply_to?}`). A `left` that does not
 *    answer our `leave` (e.g. reason `media_timeout`) means the server removed us from the room:
 *    the client has already closed both peer connections and may `join()` again;
 *  - `track`: `{participantId, track, stream, trackInfo}` when a remote participant's audio
 *    arrives on the subscribe connection (`stream.id === participantId`);
 *  - `track_ended`: `{participantId}` when that participant's audio is no longer offered;
 *  - `connection_state`: `{target: 'publish'|'subscribe', state}` on RTCPeerConnection
 *    connectionState changes;
 *  - `warning`: `{message, error}` for client-side problems that are not fatal (a candidate that
 *    could not be applied, a subscribe offer that failed...);
 *  - `close`: `{code, reason, wasClean}` when the WebSocket closed (the client is then dead: create
 *    a new one to reconnect; there is no automatic reconnection).
 *
 * Requests that expect an answer (`join`, `publish`, `leave`) return promises. An `error`
 * message whose `in_reply_to` names the request's type rejects that promise with a
 * {@link CommhubError} carrying the server's `code`.
 *
 * @module commhub
 */

/** Protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** Roles a participant may join with. */
export const ROLES = Object.freeze(['agent', 'customer', 'pstn', 'supervisor', 'guest']);

/**
 * An error from the server (`code` is one of the protocol's error codes, e.g. `unauthorized`,
 * `out_of_order`, `bad_sdp`) or from the client itself (`timeout`, `closed`, `not_joined`,
 * `no_audio_track`, `not_connected`, `publish_failed`).
 */
export class CommhubError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{inReplyTo?: string, serverMessage?: object}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(`${code}: ${message}`);
    this.name = 'CommhubError';
    /** @type {string} */
    this.code = code;
    /** @type {string|undefined} the `type` of the request this error answers */
    this.inReplyTo = extra.inReplyTo;
    /** @type {object|undefined} the raw `error` message, when it came from the server */
    this.serverMessage = extra.serverMessage;
  }
}

/**
 * @typedef {object} ParticipantInfo
 * @property {string} id            participant id (also the MediaStream id of its audio)
 * @property {string} display_name
 * @property {string} role          agent | customer | pstn | supervisor | guest
 * @property {boolean} publishing
 */

/**
 * @typedef {object} ClientOptions
 * @property {RTCIceServer[]} [iceServers]   ICE servers for both peer connections (e.g. the
 *   `iceServers` of a token response); the ones the server sends in `joined.ice_servers` are
 *   appended, an entry with the same `urls` replacing the one given here. May also be set as
 *   `client.iceServers` before `join()`. Default: none.
 * @property {number} [requestTimeoutMs]     How long join/publish/leave wait for their answer
 *   (default 15000).
 * @property {number} [connectTimeoutMs]     How long to wait for the socket and `welcome`
 *   (default 10000).
 * @property {string} [protocols]            WebSocket sub-protocols (default none).
 */

const DEFAULT_KEEPALIVE_SECS = 30;

/** Server message types that answer a client request, keyed by the request type. */
const REPLY_OF = Object.freeze({
  join: 'joined',
  publish: 'publish_answer',
  leave: 'left',
});

/**
 * A commhub participant: one WebSocket, one publish and one subscribe RTCPeerConnection.
 */
export class CommhubClient extends EventTarget {
  /**
   * @param {string} url  WebSocket URL of the server's `/ws` endpoint, e.g. `wss://host/ws`.
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    /** @type {string} */
    this.url = url;
    /** @type {RTCIceServer[]} */
    this.iceServers = Array.isArray(options.iceServers) ? options.iceServers.slice() : [];
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this._protocols = options.protocols;

    /**
     * `idle` (no socket yet) | `connecting` | `connected` (welcome received, not in a room) |
     * `joining` | `joined` | `closed`.
     * @type {string}
     */
    this.state = 'idle';
    /** @type {object|null} the `welcome` message */
    this.welcome = null;
    /** @type {number} seconds between pings */
    this.keepaliveSecs = DEFAULT_KEEPALIVE_SECS;
    /** @type {string|null} */
    this.room = null;
    /** @type {string|null} this participant's id */
    this.participantId = null;
    /** @type {ParticipantInfo|null} this participant, as far as the client knows */
    this.self = null;
    /** @type {Map<string, ParticipantInfo>} everyone else in the room */
    this.participants = new Map();
    /** @type {Map<string, MediaStream>} remote audio, keyed by participant id (= stream id) */
    this.remoteStreams = new Map();
    /** @type {Map<string, number>} last audio level (0..1) per participant id */
    this.levels = new Map();
    /** @type {string|null} */
    this.activeSpeaker = null;
    /** @type {RTCPeerConnection|null} */
    this.publishPc = null;
    /** @type {RTCPeerConnection|null} */
    this.subscribePc = null;
    /** @type {number} revision of the last subscribe offer answered */
    this.subscribeRevision = 0;
    /** @type {MediaStream|null} */
    this.localStream = null;
    /** @type {number|null} round-trip time of the last ping, in milliseconds */
    this.lastRttMs = null;

    /** @type {WebSocket|null} */
    this._ws = null;
    this._connecting = null;
    /** @type {Map<string, {resolve: Function, reject: Function, timer: any}>} */
    this._pending = new Map();
    this._pingTimer = null;
    this._pingId = 0;
    this._pingSent = new Map();
    this._serverIceServers = [];
    // Remote candidates that arrived before their connection had a remote description.
    this._remoteCandidates = { publish: [], subscribe: [] };
    // Local publish candidates are held until the server answered the publish offer: it refuses
    // `ice_candidate` for a publish connection it has not negotiated yet.
    this._localPublishCandidates = [];
    this._publishAnswered = false;
    this._publishing = false;
    this._lastPublishAnswer = null;
    // Subscribe offers are applied one after another.
    this._subscribeChain = Promise.resolve();
    /** @type {Map<string, string>} remote track id -> participant id */
    this._trackOwner = new Map();
    /** @type {Array<object>} track list of the last subscribe offer */
    this._offeredTracks = [];
    this._joinParams = null;
  }

  // ---------------------------------------------------------------------------------------------
  // Public API
  // ---------------------------------------------------------------------------------------------

  /**
   * Open the WebSocket and wait for `welcome`. Called by {@link join}; calling it again returns
   * the same promise.
   * @returns {Promise<object>} the `welcome` message
   */
  connect() {
    if (this.state === 'closed') {
      return Promise.reject(new CommhubError('closed', 'this client is closed; create a new one'));
    }
    if (this._connecting) return this._connecting;
    this.state = 'connecting';
    this._connectStartedAt = performance.now();
    this._firstPacketMs = new Map();
    this._timeline = [];
    this._connecting = new Promise((resolve, reject) => {
      let ws;
      try {
        ws = this._protocols ? new WebSocket(this.url, this._protocols) : new WebSocket(this.url);
      } catch (err) {
        this.state = 'closed';
        reject(new CommhubError('not_connected', `cannot open ${this.url}: ${err.message}`));
        return;
      }
      this._ws = ws;
      const timer = setTimeout(() => {
        reject(new CommhubError('timeout', `no welcome from ${this.url} within ${this.connectTimeoutMs} ms`));
        this.close();
      }, this.connectTimeoutMs);
      this._pending.set('welcome', {
        resolve: (msg) => { clearTimeout(timer); resolve(msg); },
        reject: (err) => { clearTimeout(timer); reject(err); },
        timer: null,
      });
      ws.addEventListener('message', (ev) => this._onFrame(ev.data));
      ws.addEventListener('close', (ev) => this._onSocketClose(ev));
      ws.addEventListener('error', () => {
        // A `close` event always follows; it does the cleanup.
      });
    });
    return this._connecting;
  }

  /**
   * Join a room (opening the socket first if needed).
   * @param {{room: string, displayName: string, role?: string, token?: string}} params
   *   `role` defaults to `customer` (server-side default); `token` is needed when the server has
   *   auth on.
   * @returns {Promise<object>} the `joined` message:
   *   `{type:'joined', room, participant_id, participants: ParticipantInfo[], ice_servers}`
   */
  async join({ room, displayName, role, token } = {}) {
    await this.connect();
    if (this.state !== 'connected') {
      throw new CommhubError('out_of_order', `cannot join while ${this.state}`);
    }
    const msg = { type: 'join', room, display_name: displayName, protocol: PROTOCOL_VERSION };
    if (role) msg.role = role;
    if (token) msg.token = token;
    this.state = 'joining';
    this._joinParams = { room, displayName: typeof displayName === 'string' ? displayName.trim() : displayName, role };
    let joined;
    try {
      joined = await this._request(msg);
    } catch (err) {
      if (this.state === 'joining') this.state = 'connected';
      throw err;
    }
    return joined;
  }

  /**
   * Publish the first audio track of `mediaStream` on the publish connection. Resolves once the
   * server's answer has been applied (media then flows as soon as ICE/DTLS connect).
   *
   * Calling it again once the server has answered swaps the track in place
   * (`RTCRtpSender.replaceTrack`, no renegotiation) and resolves with the previous answer. The
   * server keeps one publish connection per participant for its whole time in the room, so when
   * that connection has failed this rejects with `publish_failed`: `leave()` and `join()` again.
   * @param {MediaStream} mediaStream
   * @returns {Promise<object>} the `publish_answer` message
   */
  async publish(mediaStream) {
    if (this.state !== 'joined') throw new CommhubError('not_joined', 'join a room before publishing');
    const track = mediaStream && mediaStream.getAudioTracks()[0];
    if (!track) throw new CommhubError('no_audio_track', 'the stream has no audio track');
    if (this._publishing) throw new CommhubError('out_of_order', 'a publish is already in progress');
    const old = this.publishPc;
    if (old && this._publishAnswered) {
      if (old.connectionState === 'failed' || old.connectionState === 'closed') {
        throw new CommhubError('publish_failed', 'the publish connection has failed; leave and join again');
      }
      const sender = old.getTransceivers()[0].sender;
      await sender.replaceTrack(track);
      this.localStream = mediaStream;
      return this._lastPublishAnswer;
    }
    this._publishing = true;
    try {
      return await this._negotiatePublish(mediaStream, track);
    } finally {
      this._publishing = false;
    }
  }

  async _negotiatePublish(mediaStream, track) {
    if (this.publishPc) {
      this.publishPc.close();
      this.publishPc = null;
    }
    this._publishAnswered = false;
    this._localPublishCandidates = [];
    this._remoteCandidates.publish = [];
    this.localStream = mediaStream;

    const pc = new RTCPeerConnection(this._rtcConfig());
    this.publishPc = pc;
    pc.addTransceiver(track, { direction: 'sendonly', streams: [mediaStream] });
    pc.addEventListener('icecandidate', (ev) => {
      if (pc !== this.publishPc) return;
      const cand = candidateToWire(ev.candidate);
      if (cand === undefined) return;
      if (!this._publishAnswered) {
        this._localPublishCandidates.push(cand);
        return;
      }
      try {
        this._send({ type: 'ice_candidate', target: 'publish', candidate: cand });
      } catch (err) {
        this._warn('could not send a publish candidate', err);
      }
    });
    this._watchState(pc, 'publish');

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this._mark('publish_offer_sent');
    const answer = await this._request({ type: 'publish', sdp: pc.localDescription.sdp });
    if (pc !== this.publishPc) throw new CommhubError('closed', 'publish connection was replaced or closed');
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this._publishAnswered = true;
    this._lastPublishAnswer = answer;
    if (this.self) this.self.publishing = true;
    await this._flushRemoteCandidates('publish');
    for (const cand of this._localPublishCandidates.splice(0)) {
      this._send({ type: 'ice_candidate', target: 'publish', candidate: cand });
    }
    return answer;
  }

  /**
   * Leave the room: sends `leave`, waits for `left`, closes both peer connections. The socket
   * stays open and {@link join} may be called again.
   * @returns {Promise<object|null>} the `left` message (null if not in a room)
   */
  async leave() {
    if (this.state !== 'joined' && this.state !== 'joining') return null;
    let left = null;
    try {
      left = await this._request({ type: 'leave' });
    } finally {
      this._teardownRoom();
      if (this.state !== 'closed') this.state = 'connected';
    }
    return left;
  }

  /** Close everything: peer connections, pings and the socket. The client cannot be reused. */
  close() {
    if (this.state === 'closed' && !this._ws) return;
    this._teardownRoom();
    this._stopPing();
    this.state = 'closed';
    const ws = this._ws;
    this._ws = null;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    }
    this._rejectAll(new CommhubError('closed', 'client closed'));
  }

  /**
   * The raw stats report of one of the peer connections.
   * @param {'publish'|'subscribe'} [target='subscribe']
   * @returns {Promise<RTCStatsReport|null>} null when that connection does not exist
   */
  async getStats(target = 'subscribe') {
    const pc = target === 'publish' ? this.publishPc : this.subscribePc;
    return pc ? pc.getStats() : null;
  }

  /**
   * The subscribe connection's `inbound-rtp` audio stats, one plain object per remote track,
   * each extended with `participantId` (owner of the track, when known) and `codecMimeType`
   * (from the referenced `codec` entry, e.g. `audio/opus`). Empty when not subscribed.
   * @returns {Promise<Array<object>>}
   */
  async inboundAudioStats() {
    return this._rtpStats('subscribe', 'inbound-rtp');
  }

  /**
   * Milliseconds from opening the WebSocket to the first RTP packet of each remote
   * participant's track (the track's first `unmute`), by participant id.
   * @returns {Object<string, number>}
   */
  firstPacketTimes() {
    return Object.fromEntries(this._firstPacketMs || []);
  }

  /**
   * What happened during the join and when: `[[event, ms after opening the WebSocket], ...]`
   * (messages from the server, offers and answers sent, connection states, first packets).
   * @returns {Array<[string, number]>}
   */
  timeline() {
    return (this._timeline || []).slice();
  }

  _mark(event) {
    if (!this._timeline || this._timeline.length >= 64) return;
    this._timeline.push([event, Math.round(performance.now() - this._connectStartedAt)]);
  }

  /**
   * The DTLS/SRTP parameters each connection negotiated, from its `transport` stats:
   * `{publish: {srtpCipher, dtlsCipher, dtlsRole, tlsVersion}, subscribe: {...}}`.
   * @returns {Promise<object>}
   */
  async transportInfo() {
    const out = {};
    for (const target of ['publish', 'subscribe']) {
      const report = await this.getStats(target);
      if (!report) continue;
      report.forEach((s) => {
        if (s.type !== 'transport') return;
        out[target] = {
          srtpCipher: s.srtpCipher, dtlsCipher: s.dtlsCipher, dtlsRole: s.dtlsRole, tlsVersion: s.tlsVersion,
        };
      });
    }
    return out;
  }

  /**
   * The publish connection's `outbound-rtp` audio stats (same extensions as
   * {@link inboundAudioStats}).
   * @returns {Promise<Array<object>>}
   */
  async outboundAudioStats() {
    return this._rtpStats('publish', 'outbound-rtp');
  }

  /**
   * Send a ping now (pings are also sent automatically every `keepalive_secs`).
   * @returns {number} the ping id
   */
  ping() {
    const id = ++this._pingId;
    this._pingSent.set(id, performance.now());
    if (this._pingSent.size > 16) this._pingSent.delete(this._pingSent.keys().next().value);
    this._send({ type: 'ping', id });
    return id;
  }

  // ---------------------------------------------------------------------------------------------
  // Internals
  // ---------------------------------------------------------------------------------------------

  _rtcConfig() {
    // The same server may come from both sides (e.g. the iceServers of a token response and
    // `joined.ice_servers`); keep one entry per URL list, the later (server-sent, fresher
    // credentials) one winning, in first-seen order.
    const byUrls = new Map();
    for (const s of [...this.iceServers, ...this._serverIceServers]) {
      if (!s || s.urls === undefined) continue;
      const urls = Array.isArray(s.urls) ? s.urls : [s.urls];
      byUrls.set(JSON.stringify([...urls].sort()), s);
    }
    return { iceServers: [...byUrls.values()] };
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _warn(message, error) {
    this._emit('warning', { message, error });
  }

  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      throw new CommhubError('not_connected', `cannot send ${msg.type}: socket is not open`);
    }
    ws.send(JSON.stringify(msg));
  }

  /** Send a request and wait for its reply (or an error with a matching `in_reply_to`). */
  _request(msg) {
    const type = msg.type;
    if (this._pending.has(type)) {
      return Promise.reject(new CommhubError('out_of_order', `a ${type} request is already pending`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(type);
        reject(new CommhubError('timeout', `no reply to ${type} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this._pending.set(type, { resolve, reject, timer });
      try {
        this._send(msg);
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(type);
        reject(err);
      }
    });
  }

  _settle(type, ok, value) {
    const p = this._pending.get(type);
    if (!p) return false;
    this._pending.delete(type);
    if (p.timer) clearTimeout(p.timer);
    if (ok) p.resolve(value); else p.reject(value);
    return true;
  }

  _rejectAll(err) {
    for (const type of [...this._pending.keys()]) this._settle(type, false, err);
  }

  _onFrame(data) {
    if (typeof data !== 'string') {
      this._warn('ignored a binary frame from the server');
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      this._warn('server sent invalid JSON', err);
      return;
    }
    if (!msg || typeof msg.type !== 'string') {
      this._warn('server sent a message without a type');
      return;
    }
    try {
      this._handle(msg);
    } catch (err) {
      this._warn(`failed to handle ${msg.type}`, err);
    }
    this._emit(msg.type, msg);
  }

  _handle(msg) {
    if (['welcome', 'joined', 'publish_answer', 'subscribe_offer'].includes(msg.type)) this._mark(msg.type);
    switch (msg.type) {
      case 'welcome':
        this.welcome = msg;
        if (msg.protocol !== undefined && msg.protocol !== PROTOCOL_VERSION) {
          this._warn(`server speaks protocol ${msg.protocol}; this client speaks ${PROTOCOL_VERSION}`);
        }
        if (Number.isFinite(msg.keepalive_secs) && msg.keepalive_secs > 0) {
          this.keepaliveSecs = msg.keepalive_secs;
        }
        if (this.state === 'connecting') this.state = 'connected';
        this._startPing();
        this._settle('welcome', true, msg);
        break;
      case 'joined':
        this.state = 'joined';
        this.room = msg.room;
        this.participantId = msg.participant_id;
        this._serverIceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        this.self = {
          id: msg.participant_id,
          display_name: this._joinParams ? this._joinParams.displayName : '',
          role: this._joinParams && this._joinParams.role ? this._joinParams.role : 'customer',
          publishing: false,
        };
        this.participants.clear();
        for (const p of msg.participants || []) {
          if (p.id !== msg.participant_id) this.participants.set(p.id, p);
        }
        this._settle('join', true, msg);
        break;
      case 'participant_joined':
      case 'participant_updated':
        if (msg.participant && msg.participant.id) {
          if (msg.participant.id === this.participantId) this.self = { ...this.self, ...msg.participant };
          else this.participants.set(msg.participant.id, msg.participant);
        }
        break;
      case 'participant_left':
        this.participants.delete(msg.participant_id);
        this.levels.delete(msg.participant_id);
        if (this.activeSpeaker === msg.participant_id) this.activeSpeaker = null;
        this._dropRemote(msg.participant_id);
        break;
      case 'publish_answer':
        this._settle('publish', true, msg);
        break;
      case 'subscribe_offer':
        this._subscribeChain = this._subscribeChain
          .then(() => this._onSubscribeOffer(msg))
          .catch((err) => this._warn(`subscribe offer ${msg.revision} failed`, err));
        break;
      case 'ice_candidate':
        this._onRemoteCandidate(msg.target, msg.candidate);
        break;
      case 'audio_levels':
        for (const l of msg.levels || []) this.levels.set(l.participant_id, l.level);
        if ('active_speaker' in msg) this.activeSpeaker = msg.active_speaker ?? null;
        break;
      case 'active_speaker':
        this.activeSpeaker = msg.participant_id ?? null;
        break;
      case 'left':
        // Either the answer to our `leave`, or the server removed us from the room on its own
        // (e.g. reason `media_timeout`); either way the room is gone, the socket stays.
        if (!this._settle('leave', true, msg) && (this.state === 'joined' || this.state === 'joining')) {
          this._teardownRoom();
          this._rejectAll(new CommhubError('closed', `removed from the room (${msg.reason})`));
          this.state = 'connected';
        }
        break;
      case 'pong': {
        const sent = this._pingSent.get(msg.id);
        if (sent !== undefined) {
          this._pingSent.delete(msg.id);
          this.lastRttMs = performance.now() - sent;
        }
        break;
      }
      case 'bye':
        this._teardownRoom();
        this._rejectAll(new CommhubError('closed', `server said bye (${msg.reason})`));
        if (this.state !== 'closed') this.state = 'connected';
        break;
      case 'error': {
        const err = new CommhubError(msg.code || 'internal', msg.message || 'server error', {
          inReplyTo: msg.in_reply_to,
          serverMessage: msg,
        });
        if (msg.in_reply_to === 'join' && this.state === 'joining') this.state = 'connected';
        if (msg.in_reply_to && this._pending.has(msg.in_reply_to)) {
          this._settle(msg.in_reply_to, false, err);
        }
        break;
      }
      default:
        // Unknown types are still re-dispatched as events; nothing to do here.
        break;
    }
  }

  async _onSubscribeOffer(msg) {
    if (this.state !== 'joined') return;
    let pc = this.subscribePc;
    if (!pc) {
      pc = new RTCPeerConnection(this._rtcConfig());
      this.subscribePc = pc;
      pc.addEventListener('icecandidate', (ev) => {
        if (pc !== this.subscribePc) return;
        const cand = candidateToWire(ev.candidate);
        if (cand === undefined) return;
        try {
          this._send({ type: 'ice_candidate', target: 'subscribe', candidate: cand });
        } catch (err) {
          this._warn('could not send a subscribe candidate', err);
        }
      });
      pc.addEventListener('track', (ev) => this._onRemoteTrack(pc, ev));
      this._watchState(pc, 'subscribe');
    }
    this._offeredTracks = Array.isArray(msg.tracks) ? msg.tracks : [];
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    if (pc !== this.subscribePc) return;
    await this._flushRemoteCandidates('subscribe');
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (pc !== this.subscribePc) return;
    this.subscribeRevision = msg.revision;
    this._send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp, revision: msg.revision });
    this._mark('subscribe_answer_sent');

    // Participants whose tracks are no longer offered.
    const offered = new Set(this._offeredTracks.map((t) => t.participant_id));
    for (const id of [...this.remoteStreams.keys()]) {
      if (!offered.has(id)) this._dropRemote(id);
    }
  }

  _onRemoteTrack(pc, ev) {
    if (pc !== this.subscribePc) return;
    const track = ev.track;
    let stream = ev.streams && ev.streams[0];
    // The stream id is the participant id; fall back to the offer's track list.
    let info = this._offeredTracks.find((t) => stream && t.stream_id === stream.id)
      || this._offeredTracks.find((t) => t.track_id === track.id)
      || (ev.transceiver && ev.transceiver.mid !== null
        ? this._offeredTracks[this._midIndex(pc, ev.transceiver.mid)]
        : undefined);
    const participantId = stream ? stream.id : info ? info.participant_id : track.id;
    if (!stream) stream = new MediaStream([track]);
    this._trackOwner.set(track.id, participantId);
    this.remoteStreams.set(participantId, stream);
    // A remote track is muted until its first RTP packet arrives: that moment, counted from
    // opening the WebSocket, is this participant's join latency for that sender.
    const firstPacket = () => {
      if (this._firstPacketMs && !this._firstPacketMs.has(participantId)) {
        this._firstPacketMs.set(participantId, performance.now() - this._connectStartedAt);
        this._mark(`first_packet ${participantId}`);
      }
    };
    if (track.muted) track.addEventListener('unmute', firstPacket, { once: true });
    else firstPacket();
    track.addEventListener('ended', () => {
      if (this.remoteStreams.get(participantId) === stream && stream.getTracks().every((t) => t.readyState === 'ended')) {
        this._dropRemote(participantId);
      }
    });
    this._emit('track', { participantId, track, stream, trackInfo: info || null });
  }

  /** Index of the m-section with `mid` among the connection's m-sections. */
  _midIndex(pc, mid) {
    const sdp = pc.remoteDescription ? pc.remoteDescription.sdp : '';
    const mids = [...sdp.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]);
    return mids.indexOf(mid);
  }

  _dropRemote(participantId) {
    if (!this.remoteStreams.has(participantId)) return;
    this.remoteStreams.delete(participantId);
    for (const [trackId, owner] of this._trackOwner) {
      if (owner === participantId) this._trackOwner.delete(trackId);
    }
    this._emit('track_ended', { participantId });
  }

  _onRemoteCandidate(target, candidate) {
    if (target !== 'publish' && target !== 'subscribe') return;
    const pc = target === 'publish' ? this.publishPc : this.subscribePc;
    if (!pc || !pc.remoteDescription) {
      this._remoteCandidates[target].push(candidate);
      return;
    }
    this._addCandidate(pc, target, candidate);
  }

  async _flushRemoteCandidates(target) {
    const pc = target === 'publish' ? this.publishPc : this.subscribePc;
    if (!pc) return;
    for (const cand of this._remoteCandidates[target].splice(0)) {
      await this._addCandidate(pc, target, cand);
    }
  }

  async _addCandidate(pc, target, candidate) {
    try {
      if (candidate === null || candidate === undefined) {
        await pc.addIceCandidate();
      } else {
        await pc.addIceCandidate(candidate);
      }
    } catch (err) {
      // End-of-candidates is not supported everywhere; a bad candidate is not fatal either.
      if (candidate) this._warn(`could not add a ${target} candidate`, err);
    }
  }

  _watchState(pc, target) {
    pc.addEventListener('connectionstatechange', () => {
      this._mark(`${target}_${pc.connectionState}`);
      this._emit('connection_state', { target, state: pc.connectionState });
    });
  }

  async _rtpStats(target, type) {
    const report = await this.getStats(target);
    if (!report) return [];
    const out = [];
    report.forEach((s) => {
      if (s.type !== type || (s.kind || s.mediaType) !== 'audio') return;
      const codec = s.codecId ? report.get(s.codecId) : undefined;
      const entry = { ...s };
      entry.codecMimeType = codec ? codec.mimeType : undefined;
      if (type === 'inbound-rtp') {
        entry.participantId = this._trackOwner.get(s.trackIdentifier)
          ?? this._participantOfMid(s.mid);
      } else {
        entry.participantId = this.participantId ?? undefined;
      }
      out.push(entry);
    });
    return out;
  }

  _participantOfMid(mid) {
    const pc = this.subscribePc;
    if (!pc || mid === undefined) return undefined;
    for (const t of pc.getTransceivers()) {
      if (t.mid === mid) {
        const owner = this._trackOwner.get(t.receiver.track.id);
        if (owner) return owner;
      }
    }
    const info = this._offeredTracks[this._midIndex(pc, mid)];
    return info ? info.participant_id : undefined;
  }

  _startPing() {
    this._stopPing();
    const everyMs = Math.max(1, this.keepaliveSecs) * 1000;
    this._pingTimer = setInterval(() => {
      try { this.ping(); } catch { /* socket closing; close handler cleans up */ }
    }, everyMs);
  }

  _stopPing() {
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  /** Close both peer connections and forget the room (the socket stays). */
  _teardownRoom() {
    for (const pc of [this.publishPc, this.subscribePc]) {
      if (pc) {
        try { pc.close(); } catch { /* already closed */ }
      }
    }
    this.publishPc = null;
    this.subscribePc = null;
    this._publishAnswered = false;
    this._lastPublishAnswer = null;
    this._localPublishCandidates = [];
    this._remoteCandidates = { publish: [], subscribe: [] };
    this._subscribeChain = Promise.resolve();
    this.subscribeRevision = 0;
    this._offeredTracks = [];
    for (const id of [...this.remoteStreams.keys()]) this._dropRemote(id);
    this._trackOwner.clear();
    this.participants.clear();
    this.levels.clear();
    this.activeSpeaker = null;
    this.room = null;
    this.participantId = null;
    this.self = null;
    this._serverIceServers = [];
    this.localStream = null;
  }

  _onSocketClose(ev) {
    const wasOurs = this._ws === null || ev.target === this._ws;
    if (!wasOurs) return;
    this._stopPing();
    this._teardownRoom();
    this._ws = null;
    this.state = 'closed';
    this._rejectAll(new CommhubError('closed', `socket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`));
    this._emit('close', { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
  }
}

/**
 * An RTCIceCandidate as the wire wants it: `RTCIceCandidateInit` fields, `null` for the end of
 * candidates, `undefined` for the empty end-of-generation candidates some browsers emit (not
 * sent).
 * @param {RTCIceCandidate|null} cand
 * @returns {object|null|undefined}
 */
function candidateToWire(cand) {
  if (cand === null || cand === undefined) return null;
  if (!cand.candidate) return undefined;
  const out = { candidate: cand.candidate };
  if (cand.sdpMid !== null && cand.sdpMid !== undefined) out.sdpMid = cand.sdpMid;
  if (cand.sdpMLineIndex !== null && cand.sdpMLineIndex !== undefined) out.sdpMLineIndex = cand.sdpMLineIndex;
  if (cand.usernameFragment) out.usernameFragment = cand.usernameFragment;
  return out;
}
