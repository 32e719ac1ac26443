#!/usr/bin/env node
// The demo page's SMS panel (#sms) in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core), against a commhub in SMPP mode whose SMSC is the simulator the Rust test
// runs (tests/sms/smsc.js):
//   1. type a message in the composer and send it; it shows in the thread and reaches
//      `delivered` (the item's data-status);
//   2. the Rust test injects an MO reply at the simulator once the page prints the stage
//      `delivered`; the page shows the inbound message (--reply) in the thread;
//   3. the Rust test injects "STOP" once the page prints `reply_shown`; the conversation gets
//      the `opted out` badge.
//
// Usage: node tests/browser/sms_test.mjs --base http://127.0.0.1:PORT --from +1555... \
//        --to +1555... --body TEXT --reply TEXT --out DIR [--chromium /usr/bin/chromium] \
//        [--timeout 90]
//
// Prints progress lines (`{"stage": ...}`) and one final JSON line with `ok` and what the page
// showed; exits 0 on success, 1 otherwise.

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
  for (const k of ['base', 'from', 'to', 'body', 'reply', 'out']) if (!o[k]) throw new Error(`missing --${k}`);
  o.base = o.base.replace(/\/+$/, '');
  o.timeoutMs = Math.max(10, Number(o.timeout) || 90) * 1000;
  return o;
}

/** What the panel shows now (for progress and failure messages). */
function panelState() {
  const items = (sel) => [...document.querySelectorAll(sel)].map((li) => ({
    text: li.textContent.trim(),
    ...li.dataset,
    className: li.className,
  }));
  return {
    status: document.getElementById('sms-status').textContent,
    conversations: items('#sms-conversations li'),
    messages: items('#sms-messages li'),
  };
}

/** Poll `fn(arg)` in the page until it returns a truthy value or `ms` pass. */
async function waitFor(page, what, fn, arg, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await page.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > deadline) {
      const st = await page.evaluate(panelState);
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify(st)}`);
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
    ignoreDefaultArgs: ['--headless'],
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run'],
    timeout: 30_000,
  });
  const overall = setTimeout(() => {
    console.log(JSON.stringify({ ...result, error: `overall timeout (${o.timeoutMs} ms)` }));
    process.exit(1);
  }, o.timeoutMs);
  try {
    const page = await (await browser.newContext({ viewport: { width: 900, height: 1200 } })).newPage();
    page.on('console', (m) => { if (m.type() === 'error') console.error(`page: ${m.text()}`); });
    await page.goto(`${o.base}/`, { waitUntil: 'load' });
    await page.waitForSelector('#sms');

    // 1. Compose and send.
    await page.fill('#sms-from', o.from);
    await page.fill('#sms-to', o.to);
    await page.fill('#sms-body', o.body);
    await page.click('#sms-send');
    result.sendNote = await waitFor(page, 'the send note', () => {
      const t = document.getElementById('sms-status').textContent;
      return /^Message |^Send: /.test(t) ? t : null;
    });
    if (!/^Message (queued|sent|delivered)/.test(result.sendNote)) {
      throw new Error(`the send was not accepted: ${result.sendNote}`);
    }
    stage('sent', { note: result.sendNote });
    const sent = await waitFor(page, 'the message `delivered` in the thread', (body) => {
      const li = [...document.querySelectorAll('#sms-messages li.sms.outbound')]
        .find((x) => x.querySelector('.body')?.textContent === body);
      return li && li.dataset.status === 'delivered'
        ? { id: li.dataset.id, status: li.dataset.status, badge: li.querySelector('.badge').textContent }
        : null;
    }, o.body, 30_000);
    result.sent = sent;
    result.composerCleared = await page.evaluate(() => document.getElementById('sms-body').value === '');
    await page.screenshot({ path: path.join(o.out, 'sms-delivered.png') });
    stage('delivered', sent);

    // 2. The reply (the Rust test injects it at the simulator now).
    result.reply = await waitFor(page, 'the inbound reply in the thread', (reply) => {
      const li = [...document.querySelectorAll('#sms-messages li.sms.inbound')]
        .find((x) => x.querySelector('.body')?.textContent === reply);
      return li ? { id: li.dataset.id, status: li.dataset.status, who: li.querySelector('.who').textContent } : null;
    }, o.reply, 30_000);
    stage('reply_shown', result.reply);

    // 3. STOP (injected by the Rust test): the conversation shows `opted out`.
    result.optedOut = await waitFor(page, 'the `opted out` badge', (their) => {
      const li = [...document.querySelectorAll('#sms-conversations li[data-conversation-id]')]
        .find((x) => x.querySelector('button')?.textContent.startsWith(their));
      const badge = li?.querySelector('.badge.opted-out');
      return li && li.dataset.optedOut === '1' && badge
        ? { conversation: li.dataset.conversationId, badge: badge.textContent }
        : null;
    }, o.to, 30_000);
    stage('opted_out', result.optedOut);
    result.panel = await page.evaluate(panelState);
    await page.screenshot({ path: path.join(o.out, 'sms-opted-out.png') });
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
