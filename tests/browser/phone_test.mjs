#!/usr/bin/env node
// The demo page's Phone card in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core), against a commhub whose SIP trunk is a sipp UAS the Rust test runs:
//   1. dial a number with the dialer; the call is answered and the phone leg's audio arrives;
//   2. press a keypad key; log verbal consent (yes); hang up;
//   3. an inbound phone call rings (the Rust test starts sipp once the page says `ready`), shows
//      under "Incoming calls", is joined with its Join button, and the page receives the
//      caller's `dtmf` digit 1.
//
// Usage: node tests/browser/phone_test.mjs --base http://127.0.0.1:PORT --number +1555... \
//        --wav TONE.wav --out DIR [--chromium /usr/bin/chromium] [--timeout 90]
//
// Prints progress lines (`{"stage": ...}`) and one final JSON line with `ok`, the calls and
// what the page saw; exits 0 on success, 1 otherwise.

import fs from 'node:fs';
import path from 'node:path';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function parseArgs(argv) {
  const o = { chromium: process.env.CHROMIUM || '/usr/bin/chromium', timeout: '90' };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i]);
    if (!m || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    o[m[1]] = argv[++i];
  }
  for (const k of ['base', 'number', 'wav', 'out']) if (!o[k]) throw new Error(`missing --${k}`);
  o.base = o.base.replace(/\/+$/, '');
  o.timeoutMs = Math.max(10, Number(o.timeout) || 90) * 1000;
  return o;
}

/** Poll `fn` in the page until it returns a truthy value or `ms` pass. */
async function waitFor(page, what, fn, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await page.evaluate(fn);
    if (v) return v;
    if (Date.now() > deadline) {
      const phone = await page.evaluate(() => JSON.stringify({ phone: window.commhubPhone, state: window.commhubState }));
      throw new Error(`timed out waiting for ${what}: ${phone}`);
    }
    await sleep(200);
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const result = { ok: false, stages: [] };
  const stage = (s, extra = {}) => {
    result.stages.push(s);
    console.log(JSON.stringify({ stage: s, ...extra }));
  };
  fs.mkdirSync(o.out, { recursive: true });
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: o.chromium,
    headless: true,
    ignoreDefaultArgs: ['--headless', '--mute-audio'],
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${path.resolve(o.wav)}`,
      '--autoplay-policy=no-user-gesture-required',
    ],
    timeout: 30_000,
  });
  const overall = setTimeout(() => {
    console.log(JSON.stringify({ ...result, error: `overall timeout (${o.timeoutMs} ms)` }));
    process.exit(1);
  }, o.timeoutMs);
  try {
    const page = await (await browser.newContext({ viewport: { width: 900, height: 900 } })).newPage();
    page.on('console', (m) => { if (m.type() === 'error') console.error(`page: ${m.text()}`); });
    await page.goto(`${o.base}/?name=Agent`, { waitUntil: 'load' });

    // 1. Dial.
    await page.fill('#dial-number', o.number);
    await page.click('#dial-call');
    stage('dialed');
    await waitFor(page, 'the answer', () => window.commhubPhone.status === 'answered' && window.commhubState.joined);
    result.outboundCall = await page.evaluate(() => window.commhubPhone.callId);
    stage('answered', { call: result.outboundCall });
    // The phone leg's track arrives (sipp echoes what it hears).
    const stats = await waitFor(page, 'audio from the phone leg', async () => {
      const s = await window.commhub.inboundAudioStats();
      const leg = window.commhubState.participants.find((p) => p.role === 'pstn');
      const e = leg && s.find((x) => x.participantId === leg.id);
      return e && e.packetsReceived > 50 ? { packetsReceived: e.packetsReceived, codec: e.codecMimeType } : null;
    });
    result.legStats = stats;
    // 2. Keypad and consent.
    await page.click('#keypad button[data-key="5"]');
    await waitFor(page, 'the key sent', () => window.commhubPhone.digitsSent === '5');
    await page.click('#consent-yes');
    await waitFor(page, 'the consent logged', () => window.commhubPhone.consent.includes('verbal_yes'));
    await page.screenshot({ path: path.join(o.out, 'phone-outbound.png') });
    stage('keyed');
    await page.click('#dial-hangup');
    await waitFor(page, 'the hang-up', () => !window.commhubPhone.callId && !window.commhubState.joined);
    stage('hung_up');

    // 3. Incoming: the Rust side starts the caller now.
    stage('ready');
    await waitFor(page, 'an incoming call', () => document.querySelectorAll('#incoming li[data-call-id]').length > 0, 30_000);
    result.inboundCall = await page.evaluate(() => document.querySelector('#incoming li[data-call-id]').dataset.callId);
    await page.click('#incoming li[data-call-id] button');
    await waitFor(page, 'joined the incoming call', () => window.commhubState.joined && window.commhubPhone.callId);
    stage('joined_incoming', { call: result.inboundCall });
    const heard = await waitFor(page, 'the caller pressing 1', () => window.commhubPhone.digitsHeard.map((d) => d.digit).join(''), 30_000);
    result.digitsHeard = heard;
    await page.screenshot({ path: path.join(o.out, 'phone-inbound.png') });
    result.ok = true;
  } catch (err) {
    result.error = String(err && err.message ? err.message : err).split('\nCall log:')[0];
  } finally {
    clearTimeout(overall);
    await browser.close().catch(() => {});
  }
  console.log(JSON.stringify(result));
  return result.ok ? 0 : 1;
}

main().then((code) => process.exit(code), (err) => {
  console.log(JSON.stringify({ ok: false, error: String(err) }));
  process.exit(1);
});
