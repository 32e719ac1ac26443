#!/usr/bin/env node
// Two-browser end-to-end test of commhub: two separate headless Chromium instances (Debian's
// /usr/bin/chromium driven by playwright-core) open the demo page in the same room, each with its
// own WAV file as fake microphone, and must receive each other's audio.
//
// Usage:
//   node tests/browser/chromium_test.mjs --base http://127.0.0.1:PORT --room R \
//        --wav-a A.wav --wav-b B.wav --out DIR [--chromium /usr/bin/chromium] [--timeout 60]
//
// Needs `npm ci` (or `npm install`) in tests/browser first, for playwright-core.
//
// Success: both pages joined, each sees the other participant, has received its audio track, and
// its subscribe connection's inbound-rtp audio shows packetsReceived > 50 and audioLevel > 0 (or
// totalAudioEnergy > 0) within 20 s. Prints one JSON line with the results and exits 0; otherwise
// prints a JSON line with `ok: false` and an `error`, a clear message on stderr, and exits 1. The
// whole run is bounded (default 60 s); the browsers are always closed.

import fs from 'node:fs';
import path from 'node:path';

const USAGE = `usage: node chromium_test.mjs --base http://127.0.0.1:PORT --room ROOM \\
       --wav-a A.wav --wav-b B.wav --out DIR [--chromium /usr/bin/chromium] [--timeout 60]`;

const STATS_TIMEOUT_MS = 20_000;
const MIN_PACKETS = 50;

function parseArgs(argv) {
  const opts = { chromium: process.env.CHROMIUM || '/usr/bin/chromium', timeout: '60' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new Error(`unexpected argument ${JSON.stringify(arg)}`);
    const key = m[1].replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const value = m[2] !== undefined ? m[2] : argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value`);
    opts[key] = value;
  }
  for (const k of ['base', 'room', 'wavA', 'wavB', 'out']) {
    if (!opts[k]) throw new Error(`missing --${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  }
  opts.base = opts.base.replace(/\/+$/, '');
  opts.timeoutMs = Math.max(5, Number(opts.timeout) || 60) * 1000;
  return opts;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Run `fn` with a deadline; rejects with `what` when it passes. */
async function withTimeout(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} (after ${ms} ms)`)), ms); }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function chromiumArgs(wav) {
  return [
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`,
    '--autoplay-policy=no-user-gesture-required',
  ];
}

/** The page's view of the call (window.commhubState), trimmed for the report. */
function readState(page) {
  return page.evaluate(() => {
    const s = window.commhubState;
    if (!s) return null;
    return {
      status: s.status,
      joined: s.joined,
      message: s.message,
      participantId: s.participantId,
      participants: s.participants.map((p) => ({
        id: p.id, display_name: p.display_name, role: p.role, publishing: p.publishing, self: p.self,
      })),
      remoteAudio: s.remoteAudio.slice(),
      levelsCount: s.levelsCount,
      levels: { ...s.levels },
      activeSpeaker: s.activeSpeaker,
      errors: s.errors.slice(-5),
    };
  });
}

/** The inbound-rtp audio entries of the page's subscribe connection, trimmed. */
function readStats(page) {
  return page.evaluate(async () => {
    if (!window.commhub || typeof window.commhub.inboundAudioStats !== 'function') return [];
    const stats = await window.commhub.inboundAudioStats();
    return stats.map((s) => ({
      participantId: s.participantId ?? null,
      trackIdentifier: s.trackIdentifier ?? null,
      packetsReceived: s.packetsReceived ?? 0,
      packetsLost: s.packetsLost ?? 0,
      bytesReceived: s.bytesReceived ?? 0,
      jitter: s.jitter ?? null,
      audioLevel: s.audioLevel ?? 0,
      totalAudioEnergy: s.totalAudioEnergy ?? 0,
      totalSamplesReceived: s.totalSamplesReceived ?? 0,
      concealedSamples: s.concealedSamples ?? 0,
      codec: s.codecMimeType ?? null,
    }));
  });
}

function statsOk(entry) {
  return !!entry && entry.packetsReceived > MIN_PACKETS && (entry.audioLevel > 0 || entry.totalAudioEnergy > 0);
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`chromium_test: ${err.message}\n${USAGE}`);
    return 1;
  }
  const started = Date.now();
  const result = { ok: false, base: opts.base, room: opts.room, pages: {}, elapsed_ms: 0 };
  const report = (ok, error) => {
    result.ok = ok;
    // eslint-disable-next-line no-control-regex
    if (error) result.error = String(error).replace(/\x1b\[[0-9;]*m/g, '').split('\nCall log:')[0].trim();
    result.elapsed_ms = Date.now() - started;
    console.log(JSON.stringify(result));
    if (!ok) console.error(`chromium_test: FAILED: ${result.error}`);
    return ok ? 0 : 1;
  };

  for (const k of ['wavA', 'wavB']) {
    opts[k] = path.resolve(opts[k]);
    if (!fs.existsSync(opts[k])) return report(false, `WAV file not found: ${opts[k]}`);
  }
  if (!fs.existsSync(opts.chromium)) {
    return report(false, `Chromium not found at ${opts.chromium} (apt-get install chromium, or pass --chromium)`);
  }
  fs.mkdirSync(opts.out, { recursive: true });

  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (err) {
    return report(false, `cannot load playwright-core (run \`npm ci\` in tests/browser): ${err.message}`);
  }

  const pages = [
    { key: 'a', name: 'A', other: 'B', wav: opts.wavA, shot: path.join(opts.out, 'chromium-a.png') },
    { key: 'b', name: 'B', other: 'A', wav: opts.wavB, shot: path.join(opts.out, 'chromium-b.png') },
  ];
  const browsers = [];
  let finished = false;

  // The overall deadline: whatever is stuck, report, close what can be closed and exit.
  const overall = setTimeout(async () => {
    if (finished) return;
    finished = true;
    fillPages(result, pages);
    const code = report(false, `overall timeout of ${opts.timeoutMs / 1000} s exceeded (stage: ${result.stage})`);
    setTimeout(() => process.exit(code), 5000).unref();
    await Promise.allSettled(browsers.map((b) => withTimeout(b.close(), 4000, 'close')));
    process.exit(code);
  }, opts.timeoutMs);

  try {
    result.stage = 'launch';
    await Promise.all(pages.map(async (p) => {
      const browser = await chromium.launch({
        executablePath: opts.chromium,
        // Playwright would add plain --headless and --mute-audio; the page must play audio out.
        headless: true,
        ignoreDefaultArgs: ['--headless', '--mute-audio'],
        args: chromiumArgs(p.wav),
        timeout: 30_000,
      });
      browsers.push(browser);
      p.browser = browser;
      p.version = browser.version();
      const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
      p.page = await context.newPage();
      p.console = [];
      p.page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') p.console.push(`${m.type()}: ${m.text()}`.slice(0, 300));
      });
      p.page.on('pageerror', (e) => p.console.push(`pageerror: ${e.message}`.slice(0, 300)));
    }));
    result.chromium = pages[0].version;

    result.stage = 'open';
    await Promise.all(pages.map(async (p) => {
      const q = new URLSearchParams({ room: opts.room, name: p.name, autojoin: '1' });
      p.url = `${opts.base}/?${q}`;
      const resp = await p.page.goto(p.url, { waitUntil: 'load', timeout: 15_000 });
      if (!resp || !resp.ok()) throw new Error(`GET ${p.url} answered ${resp ? resp.status() : 'nothing'}`);
    }));

    // Each page must see the other participant and have its audio track.
    result.stage = 'join';
    // Leave room for the stats stage within the overall timeout (which still applies).
    const joinBudget = Math.min(30_000, Math.max(5_000, opts.timeoutMs - (Date.now() - started) - STATS_TIMEOUT_MS / 2));
    const joinDeadline = Date.now() + joinBudget;
    for (;;) {
      for (const p of pages) p.state = await readState(p.page);
      const ready = pages.every((p) => {
        const s = p.state;
        if (!s || !s.joined) return false;
        const other = s.participants.find((x) => !x.self && x.display_name === p.other);
        return !!other && s.remoteAudio.includes(other.id);
      });
      if (ready) break;
      const failed = pages.find((p) => p.state && p.state.status === 'error');
      if (failed) throw new Error(`page ${failed.name}: ${failed.state.message}`);
      if (Date.now() > joinDeadline) {
        const why = pages.map((p) => `${p.name}: ${p.state ? `${p.state.status}, sees [${p.state.participants.map((x) => x.display_name).join(', ')}], audio from [${p.state.remoteAudio.join(', ')}], "${p.state.message}"` : 'no window.commhubState'}`);
        throw new Error(`pages did not see each other with audio: ${why.join('; ')}`);
      }
      await sleep(250);
    }

    result.stage = 'stats';
    const statsDeadline = Date.now() + STATS_TIMEOUT_MS;
    for (;;) {
      for (const p of pages) {
        const entries = await readStats(p.page);
        const otherId = p.state.participants.find((x) => !x.self && x.display_name === p.other)?.id;
        p.entries = entries;
        p.stats = entries.find((e) => e.participantId === otherId)
          || entries.slice().sort((x, y) => y.packetsReceived - x.packetsReceived)[0]
          || null;
      }
      if (pages.every((p) => statsOk(p.stats))) break;
      if (Date.now() > statsDeadline) {
        const why = pages.map((p) => `${p.name}: ${p.stats ? `packetsReceived=${p.stats.packetsReceived} audioLevel=${p.stats.audioLevel} totalAudioEnergy=${p.stats.totalAudioEnergy}` : 'no inbound-rtp audio'}`);
        throw new Error(`no audio within ${STATS_TIMEOUT_MS / 1000} s: ${why.join('; ')}`);
      }
      await sleep(500);
    }
    for (const p of pages) {
      p.state = await readState(p.page);
      p.joinInfo = await p.page.evaluate(async () => {
        const c = window.commhub;
        if (!c || typeof c.firstPacketTimes !== 'function') return null;
        return {
          firstPacketMs: c.firstPacketTimes(), timeline: c.timeline(), transport: await c.transportInfo(),
        };
      });
    }

    // Both leave; the first page's "Past calls" lists the call as ended and plays its
    // recording (an <audio> element whose MP3 Chromium loads and measures).
    result.stage = 'history';
    await Promise.all(pages.map((p) => p.page.click('#leave', { timeout: 5000 })));
    const page = pages[0].page;
    const historyDeadline = Date.now() + 30_000;
    let call = null;
    for (;;) {
      const calls = await page.evaluate(() => (window.commhubCalls?.calls || []).map((c) => ({ id: c.id, room: c.room, status: c.status })));
      call = calls.find((c) => c.room === opts.room && c.status === 'ended');
      if (call) break;
      if (Date.now() > historyDeadline) throw new Error(`Past calls never listed room ${opts.room} as ended: ${JSON.stringify(calls)}`);
      await page.click('#calls-refresh', { timeout: 5000 }).catch(() => {});
      await sleep(1000);
    }
    for (let n = 0; ; n++) {
      // Clicking the row (again) loads the call's detail; the recording becomes ready shortly
      // after the call ends.
      if (n % 4 === 0) await page.click(`tr[data-call-id="${call.id}"]`, { timeout: 5000 });
      const audio = await page.evaluate(() => {
        const a = document.querySelector('#call-detail audio');
        return a ? { src: a.currentSrc || a.src, readyState: a.readyState, duration: a.duration } : null;
      });
      if (audio && audio.readyState >= 1 && audio.duration > 1) {
        result.history = { call_id: call.id, audio };
        break;
      }
      if (Date.now() > historyDeadline) throw new Error(`the recording of call ${call.id} did not load in Past calls: ${JSON.stringify(audio)}`);
      await sleep(500);
    }

    result.stage = 'screenshot';
    await Promise.all(pages.map((p) => p.page.screenshot({ path: p.shot, timeout: 10_000 })));
    fillPages(result, pages);
    delete result.stage;
    if (finished) return 1;
    finished = true;
    return report(true);
  } catch (err) {
    if (finished) return 1;
    finished = true;
    // Best effort: screenshots and state help explain a failure.
    await Promise.allSettled(pages.filter((p) => p.page).map(async (p) => {
      p.state = await withTimeout(readState(p.page), 3000, 'state');
      await withTimeout(p.page.screenshot({ path: p.shot }), 5000, 'screenshot');
    }));
    fillPages(result, pages);
    return report(false, err && err.message ? err.message : String(err));
  } finally {
    clearTimeout(overall);
    await Promise.allSettled(browsers.map((b) => withTimeout(b.close(), 5000, 'browser close')));
  }
}

function fillPages(result, pages) {
  for (const p of pages) {
    const s = p.stats || null;
    result.pages[p.key] = {
      name: p.name,
      url: p.url,
      joined: p.state ? p.state.joined : false,
      participant_id: p.state ? p.state.participantId : null,
      participants_seen: p.state ? p.state.participants.map((x) => ({ id: x.id, display_name: x.display_name, role: x.role, self: x.self })) : [],
      remote_audio: p.state ? p.state.remoteAudio : [],
      audio_levels_received: p.state ? p.state.levelsCount : 0,
      packetsReceived: s ? s.packetsReceived : 0,
      packetsLost: s ? s.packetsLost : 0,
      audioLevel: s ? s.audioLevel : 0,
      totalAudioEnergy: s ? s.totalAudioEnergy : 0,
      jitter: s ? s.jitter : null,
      codec: s ? s.codec : null,
      inbound_tracks: p.entries ? p.entries.length : 0,
      // ms from WebSocket open to the first packet of each remote participant, and the
      // DTLS/SRTP parameters of both connections.
      first_packet_ms: p.joinInfo ? p.joinInfo.firstPacketMs : null,
      transport: p.joinInfo ? p.joinInfo.transport : null,
      timeline: p.joinInfo ? p.joinInfo.timeline : null,
      screenshot: fs.existsSync(p.shot) ? p.shot : null,
    };
    if (p.console && p.console.length) result.pages[p.key].console = p.console.slice(-10);
    if (p.state && p.state.errors && p.state.errors.length) result.pages[p.key].server_errors = p.state.errors;
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`chromium_test: crashed: ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  },
);
