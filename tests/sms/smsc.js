#!/usr/bin/env node
// A simulated SMSC for commhub's SMPP link tests (npm smpp 0.5.1).
//
//   node tests/sms/smsc.js <smpp_port> <control_port>
//
// Listens on 127.0.0.1 and prints `ready` once both ports listen. Control (HTTP, JSON):
//   POST /mode   merge into the mode (see `mode` below)
//   GET  /stats  counters, and `messages`: every submit_sm received
//   POST /mo     {from, to, text, ucs2, parts, reverse, duplicate}: deliver_sm to every
//                receiver/transceiver session; answers {"acked": n} once every
//                deliver_sm_resp came, or after 5 s
//   POST /kick   destroy every session
'use strict';

const http = require('http');
const smpp = require('smpp');

const smppPort = Number(process.argv[2] || 2775);
const controlPort = Number(process.argv[3] || 2776);

// Keep submit_sm's short_message as the raw bytes (the package would decode it as text).
delete smpp.commands.submit_sm.params.short_message.filter;

const mode = {
  refuse_bind: false,
  throttle_every: 0,
  receipt_delay_ms: 20,
  receipt_stat: 'DELIVRD',
  receipt_err: '000',
  id_format: 'hex',
  receipt_id_format: null,
  hold_receipts: 0,
  receipts_reversed: false,
  enroute_after: false,
  receipt_first: false,
  slow_submit_ms: 0,
  silent: false,
  no_receipts: false,
};

const stats = {
  binds: 0,
  bind_refused: 0,
  submits: 0,
  throttled: 0,
  receipts_sent: 0,
  receipts_acked: 0,
  receipts_nacked: 0,
  mo_sent: 0,
  mo_acked: 0,
  mo_nacked: 0,
  enquire_links: 0,
  unbinds: 0,
  generic_nacks: 0,
  sessions: 0,
  messages: [],
};

const STATES = {
  ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8,
};

const sessions = new Set();
let nextId = 0x1000;
let submitCount = 0;
let held = [];
let moRef = 1;

function utf16be(text) {
  return Buffer.from(text, 'utf16le').swap16();
}

function fromUtf16be(buf) {
  const b = Buffer.from(buf);
  if (b.length % 2) return '';
  return b.swap16().toString('utf16le');
}

// data_coding 0: GSM 03.38 unpacked septets (the package's `ASCII` codec, checked to map
// @ $ _ é € and the escape table right); 3: Latin-1; 8: UTF-16BE.
function textOf(dataCoding, body) {
  if (dataCoding === 8) return fromUtf16be(body);
  if (dataCoding === 3) return body.toString('latin1');
  return smpp.encodings.ASCII.decode(body);
}

function stamp() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
}

function receivers() {
  return [...sessions].filter((s) => s.bound === 'receiver' || s.bound === 'transceiver');
}

// Receipts go back on the session that submitted when it is a transceiver, else to a receiver.
function receiptSession(origin) {
  if (origin.bound === 'transceiver' && sessions.has(origin)) return origin;
  return receivers()[0];
}

function sendReceipt(r, stat) {
  if (mode.silent) return;
  const session = receiptSession(r.origin);
  if (!session) return;
  const err = stat === 'DELIVRD' || stat === 'ENROUTE' ? '000' : String(mode.receipt_err);
  const text = `id:${r.id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} ` +
    `submit date:${stamp()} done date:${stamp()} stat:${stat} err:${err} text:`;
  const pdu = new smpp.PDU('deliver_sm', {
    source_addr_ton: 1,
    source_addr_npi: 1,
    source_addr: r.destination,
    dest_addr_ton: 1,
    dest_addr_npi: 1,
    destination_addr: r.source,
    esm_class: 0x04,
    data_coding: 0,
    short_message: Buffer.from(text, 'ascii'),
    receipted_message_id: r.id,
    message_state: STATES[stat] || 7,
  });
  stats.receipts_sent++;
  session.send(pdu, (resp) => {
    if (resp.command_status === 0) stats.receipts_acked++;
    else stats.receipts_nacked++;
  });
}

function deliverReceipt(r) {
  sendReceipt(r, String(mode.receipt_stat));
  if (mode.enroute_after) sendReceipt(r, 'ENROUTE');
}

function queueReceipt(r) {
  const k = Number(mode.hold_receipts) || 0;
  if (k > 0) {
    held.push(r);
    if (held.length >= k) {
      const batch = mode.receipts_reversed ? held.reverse() : held;
      held = [];
      batch.forEach(deliverReceipt);
    }
    return;
  }
  deliverReceipt(r);
}

function onSubmit(session, pdu) {
  if (mode.silent) return;
  submitCount++;
  stats.submits++;
  const sm = Buffer.isBuffer(pdu.short_message) ? pdu.short_message : Buffer.alloc(0);
  const udhi = (pdu.esm_class & 0x40) !== 0 && sm.length > 0;
  const udhLen = udhi ? sm[0] + 1 : 0;
  const body = sm.slice(udhLen);
  stats.messages.push({
    source: pdu.source_addr,
    source_ton: pdu.source_addr_ton,
    destination: pdu.destination_addr,
    destination_ton: pdu.dest_addr_ton,
    data_coding: pdu.data_coding,
    esm_class: pdu.esm_class,
    registered_delivery: pdu.registered_delivery,
    short_message: sm.toString('hex'),
    udh: udhi ? sm.slice(0, udhLen).toString('hex') : null,
    text: textOf(pdu.data_coding, body),
    has_message_payload: pdu.message_payload !== undefined,
  });
  const answer = (fn) => {
    if (mode.slow_submit_ms > 0) setTimeout(fn, Number(mode.slow_submit_ms));
    else fn();
  };
  if (mode.throttle_every > 0 && submitCount % mode.throttle_every === 0) {
    stats.throttled++;
    answer(() => session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED })));
    return;
  }
  const n = nextId++;
  const id = mode.id_format === 'dec' ? String(n) : n.toString(16).toUpperCase();
  // receipt_id_format 'dec' with id_format 'hex': answers in hex, receipts in decimal (as some
  // SMSCs do; commhub's sms.smpp.receipt_id = "hex_to_dec").
  const receiptId = mode.receipt_id_format === 'dec' ? String(n) : id;
  const r = { id: receiptId, origin: session, source: pdu.source_addr, destination: pdu.destination_addr };
  const wantReceipt = (pdu.registered_delivery & 3) !== 0 && !mode.no_receipts;
  if (wantReceipt && mode.receipt_first) {
    queueReceipt(r);
    setTimeout(() => answer(() => session.send(pdu.response({ message_id: id }))), 10);
    return;
  }
  answer(() => {
    const sent = session.send(pdu.response({ message_id: id }));
    if (sent && wantReceipt) setTimeout(() => queueReceipt(r), Number(mode.receipt_delay_ms) || 0);
  });
}

const server = smpp.createServer((session) => {
  sessions.add(session);
  stats.sessions++;
  session.bound = null;
  session.on('error', () => {});
  session.on('close', () => sessions.delete(session));
  for (const role of ['transceiver', 'transmitter', 'receiver']) {
    session.on(`bind_${role}`, (pdu) => {
      if (mode.silent) return;
      if (mode.refuse_bind) {
        stats.bind_refused++;
        session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
        setTimeout(() => session.close(), 50);
        return;
      }
      stats.binds++;
      session.bound = role;
      session.send(pdu.response({ system_id: 'smsc-sim' }));
    });
  }
  session.on('enquire_link', (pdu) => {
    if (mode.silent) return;
    stats.enquire_links++;
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    stats.unbinds++;
    if (mode.silent) return;
    session.send(pdu.response());
    setTimeout(() => session.close(), 20);
  });
  session.on('generic_nack', () => { stats.generic_nacks++; });
  session.on('submit_sm', (pdu) => onSubmit(session, pdu));
});

server.on('error', (e) => {
  console.error(`smsc: ${e.message}`);
  process.exit(1);
});

// Split into `parts` chunks of whole units (2 bytes for UCS-2), never between a GSM escape
// (0x1B) and its character.
function splitPayload(buf, parts, ucs2) {
  const unit = ucs2 ? 2 : 1;
  const per = Math.ceil(buf.length / unit / parts) * unit;
  const out = [];
  let at = 0;
  for (let i = 0; i < parts; i++) {
    let end = i === parts - 1 ? buf.length : Math.min(buf.length, at + per);
    if (!ucs2 && end > at && end < buf.length && buf[end - 1] === 0x1b) end++;
    out.push(buf.slice(at, end));
    at = end;
  }
  return out;
}

function sendMo(req) {
  return new Promise((resolve) => {
    const ucs2 = !!req.ucs2;
    const text = String(req.text || '');
    // data_coding 0 is GSM 03.38 unpacked septets (the package's `ASCII` codec).
    const payload = ucs2 ? utf16be(text) : smpp.encodings.ASCII.encode(text);
    const n = Math.max(1, Number(req.parts) || 1);
    const chunks = splitPayload(payload, n, ucs2);
    const ref = moRef++ & 0xff;
    let pdus = chunks.map((chunk, i) => {
      const multi = n > 1;
      const sm = multi ? Buffer.concat([Buffer.from([5, 0, 3, ref, n, i + 1]), chunk]) : chunk;
      return {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: String(req.from || '+15550002222').replace(/^\+/, ''),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: String(req.to || '+15550001111').replace(/^\+/, ''),
        esm_class: multi ? 0x40 : 0,
        data_coding: ucs2 ? 8 : 0,
        short_message: sm,
      };
    });
    if (req.reverse) pdus.reverse();
    if (req.duplicate && pdus.length) pdus.push(pdus[0]);
    const targets = receivers();
    let expected = pdus.length * targets.length;
    let acked = 0;
    let nacked = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      resolve({ acked, nacked, sent: pdus.length * targets.length });
    };
    if (expected === 0) return finish();
    const timer = setTimeout(finish, 5000);
    for (const session of targets) {
      for (const fields of pdus) {
        stats.mo_sent++;
        const ok = session.send(new smpp.PDU('deliver_sm', Object.assign({}, fields)), (resp) => {
          if (resp.command_status === 0) {
            stats.mo_acked++;
            acked++;
          } else {
            stats.mo_nacked++;
            nacked++;
          }
          if (acked + nacked >= expected) {
            clearTimeout(timer);
            finish();
          }
        });
        if (!ok) expected--;
      }
    }
    if (acked + nacked >= expected) {
      clearTimeout(timer);
      finish();
    }
  });
}

function body(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      try {
        resolve(data ? JSON.parse(data) : {});
      } catch (e) {
        resolve({});
      }
    });
  });
}

const control = http.createServer(async (req, res) => {
  const reply = (code, obj) => {
    const text = JSON.stringify(obj);
    res.writeHead(code, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  };
  const url = req.url.split('?')[0];
  if (req.method === 'GET' && url === '/stats') return reply(200, stats);
  if (req.method === 'GET' && url === '/mode') return reply(200, mode);
  if (req.method === 'POST' && url === '/mode') {
    Object.assign(mode, await body(req));
    return reply(200, mode);
  }
  if (req.method === 'POST' && url === '/mo') return reply(200, await sendMo(await body(req)));
  if (req.method === 'POST' && url === '/kick') {
    const n = sessions.size;
    for (const s of [...sessions]) s.destroy();
    return reply(200, { kicked: n });
  }
  reply(404, { error: 'not found' });
});

let listening = 0;
const ready = () => {
  if (++listening === 2) console.log('ready');
};
server.listen(smppPort, '127.0.0.1', ready);
control.listen(controlPort, '127.0.0.1', ready);
