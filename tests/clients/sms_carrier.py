#!/usr/bin/env python3
"""HTTP SMS carrier simulator for commhub's HTTP-mode tests (docs/sms-design.md 5.3).

Run it with .venv/bin/python (it imports `twilio` and `cryptography` from .venv):

  .venv/bin/python tests/clients/sms_carrier.py --port P --style generic|twilio|telnyx \\
      --webhook-base http://127.0.0.1:<commhub port> [--token T] [--key K] \\
      [--twilio-token X] [--telnyx-key-out FILE] [--verbose]

Prints `ready` on stdout once it listens on 127.0.0.1:P. Nothing else is printed unless
--verbose (and then no text or numbers: only the kind of request and the status).

Send endpoint (what commhub's gateway calls, CARRIER_HTTP_BASEURL = http://127.0.0.1:P):
  generic  POST /messages                                   Bearer <key>, JSON (docs/sms-http.md)
           -> 201 {"id": "c-<n>", "status": "queued"}; the same `reference` gets the same id
  twilio   POST /2010-04-01/Accounts/{sid}/Messages.json     Basic sid:token, form To/From/Body/
           MediaUrl (repeated)/StatusCallback -> 201 Twilio's message resource ({"sid": "SM..."})
  telnyx   POST /v2/messages                                 Bearer <key>, JSON from/to/text/
           media_urls/webhook_url -> 200 {"data": {"id": "<uuid>", "to": [{"status": "queued"}]}}
  --key K makes generic/telnyx check the Bearer key (401 otherwise); --twilio-token X makes
  twilio check the Basic password (and is the token that signs Twilio webhooks: required).

Control endpoints (JSON):
  POST /_control/mode   {"answer": "ok"|400|429|500|"hang", "fail_next": N, "retry_after": S,
                         "hang_ms": MS, "receipt": "delivered"|"undelivered"|"failed"|"none",
                         "receipt_delay_ms": MS, "receipt_before_answer": bool,
                         "receipt_sent_first": bool, "fetch_media": bool}
        Fields not given keep their value. With fail_next N the `answer` applies to the next N
        sends only, then sends are answered ok again. Answers the whole mode.
  POST /_control/reset  mode back to defaults; sent, webhooks and counters cleared.
  GET  /_control/sent   every send received, in order: {n, id, reference, from, to, text,
                        media_urls, media (fetch results), status_callback, webhook_url,
                        authorization, content_type, user_agent, answer, repeat, at}
  GET  /_control/webhooks  every webhook posted to commhub: {kind, url, status, body, at}
  GET  /_control/telnyx-public-key  {"public_key": base64 of the 32 raw bytes}
  POST /_control/mo     {"from", "to", "text", "media_urls"?: [url | {url, content_type}],
                         "id"?, "signature"?: "ok"|"bad"|"none"|"stale", "token"?: str|null}
        Posts an inbound message to {webhook-base}/functions/v1/sms-webhook-mo in the style's
        format, signed, and answers with commhub's status code and body.
  POST /_control/dlr    {"id", "status": "delivered"|"undelivered"|"failed"|"sent",
                         "error"?, "url"?, "signature"?, "token"?}
        Posts a delivery report for any id (e.g. one commhub never sent) the same way.

Webhooks: the webhook token (--token, commhub's INBOUND_WEBHOOK_TOKEN) goes as
`Authorization: Bearer` for generic and as `?token=` for twilio and telnyx (a real carrier is
given a URL, not a header; --token-in header|query overrides). Twilio posts a form signed with
X-Twilio-Signature = RequestValidator(twilio token).compute_signature(full URL, params) (the
URL as posted, query included: commhub checks it against its public base URL + path + query,
so --webhook-base must be commhub's sms.http.public_base_url). Telnyx posts JSON events signed
with Ed25519 over "{telnyx-timestamp}|{body}" (headers telnyx-signature-ed25519 and
telnyx-timestamp); the key pair is made at start, --telnyx-key-out FILE writes the public key
(base64 of the raw 32 bytes, commhub's sms.http.telnyx_public_key). Receipts go to
{webhook-base}/functions/v1/sms-webhook-dlr, or for twilio to the send's StatusCallback and for
telnyx to the send's webhook_url when given.
"""

import argparse
import base64
import email.utils
import hashlib
import itertools
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MO_PATH = "/functions/v1/sms-webhook-mo"
DLR_PATH = "/functions/v1/sms-webhook-dlr"

DEFAULT_MODE = {
    "answer": "ok",
    "fail_next": 0,
    "retry_after": 1,
    "hang_ms": 30000,
    "receipt": "delivered",
    "receipt_delay_ms": 50,
    "receipt_before_answer": False,
    "receipt_sent_first": False,
    "fetch_media": True,
}

# Error codes the real APIs use for these cases (Twilio: 30003 unreachable, 30008 unknown;
# Telnyx: 40002 blocked as spam, 40300 carrier rejected).
TWILIO_ERR = {"undelivered": "30003", "failed": "30008"}
TELNYX_FINAL = {"delivered": "delivered", "undelivered": "delivery_failed", "failed": "sending_failed"}
TELNYX_ERR = {"undelivered": {"code": "40300", "title": "Message rejected by the carrier"},
              "failed": {"code": "40002", "title": "Blocked as spam"}}
GENERIC_ERR = {"undelivered": "unreachable", "failed": "rejected"}

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                 ".gif": "image/gif", ".webp": "image/webp", ".mp4": "video/mp4",
                 ".3gp": "video/3gpp", ".mp3": "audio/mpeg", ".amr": "audio/amr",
                 ".pdf": "application/pdf", ".vcf": "text/vcard"}


def guess_type(url):
    path = urllib.parse.urlsplit(url).path.lower()
    for ext, ct in CONTENT_TYPES.items():
        if path.endswith(ext):
            return ct
    return "application/octet-stream"


def iso_now():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000+00:00"


class Carrier:
    def __init__(self, args):
        self.args = args
        self.style = args.style
        self.lock = threading.Lock()
        self.mode = dict(DEFAULT_MODE)
        self.sent = []
        self.webhooks = []
        self.by_reference = {}
        self.counter = itertools.count(1)
        self.account_sid = "AC" + hashlib.md5(b"commhub-test").hexdigest()
        self.signing_key = None
        self.public_key_b64 = None
        if self.style == "telnyx":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
            self.signing_key = Ed25519PrivateKey.generate()
            raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            self.public_key_b64 = base64.b64encode(raw).decode()
        self.twilio_validator = None
        if self.style == "twilio":
            from twilio.request_validator import RequestValidator
            self.twilio_validator = RequestValidator(args.twilio_token)

    def log(self, msg):
        if self.args.verbose:
            print(f"sms_carrier: {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ mode
    def next_answer(self):
        """The answer for this send (and consume one of fail_next)."""
        with self.lock:
            ans = self.mode["answer"]
            if ans != "ok" and self.mode["fail_next"] > 0:
                self.mode["fail_next"] -= 1
                if self.mode["fail_next"] == 0:
                    self.mode["answer"] = "ok"
            return ans, dict(self.mode)

    def set_mode(self, body):
        with self.lock:
            for k, v in body.items():
                if k not in DEFAULT_MODE:
                    raise ValueError(f"unknown mode field {k!r}")
                if k == "answer":
                    v = str(v).lower()
                    if v not in ("ok", "400", "429", "500", "hang"):
                        raise ValueError("answer must be ok, 400, 429, 500 or hang")
                if k == "receipt" and v not in ("delivered", "undelivered", "failed", "none"):
                    raise ValueError("receipt must be delivered, undelivered, failed or none")
                self.mode[k] = v
            return dict(self.mode)

    def reset(self):
        with self.lock:
            self.mode = dict(DEFAULT_MODE)
            self.sent.clear()
            self.webhooks.clear()
            self.by_reference.clear()

    # ------------------------------------------------------------------ webhooks
    def token_url(self, url, token):
        """Add ?token= when the token travels in the URL."""
        if token is None or self.token_in() != "query":
            return url
        sep = "&" if urllib.parse.urlsplit(url).query else "?"
        return url + sep + urllib.parse.urlencode({"token": token})

    def token_in(self):
        if self.args.token_in:
            return self.args.token_in
        return "header" if self.style == "generic" else "query"

    def post_webhook(self, kind, url, params=None, event=None, signature="ok", token="default",
                     url_from_send=False):
        """POST a webhook (form `params` for twilio, JSON `event` otherwise), signed.
        A URL that commhub gave in the send (StatusCallback, webhook_url) is used as is.
        Returns (status, body text)."""
        token = self.args.token if token == "default" else token
        if not url_from_send:
            url = self.token_url(url, token)
        headers = {"User-Agent": "sms-carrier-sim/1"}
        if token is not None and self.token_in() == "header" and not url_from_send:
            headers["Authorization"] = f"Bearer {token}"
        if self.style == "twilio":
            data = urllib.parse.urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if signature != "none":
                sig = self.twilio_validator.compute_signature(url, params)
                if signature == "bad":
                    sig = base64.b64encode(b"\0" * 20).decode()
                headers["X-Twilio-Signature"] = sig
        else:
            data = json.dumps(event, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            if self.style == "telnyx" and signature != "none":
                ts = str(int(time.time()) - (3600 if signature == "stale" else 0))
                sig = self.signing_key.sign(ts.encode() + b"|" + data)
                if signature == "bad":
                    sig = bytes(64)
                headers["telnyx-timestamp"] = ts
                headers["telnyx-signature-ed25519"] = base64.b64encode(sig).decode()
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            status, text = 0, f"could not reach commhub: {e}"
        with self.lock:
            self.webhooks.append({"kind": kind, "url": url.split("?")[0], "status": status,
                                  "body": text[:2000], "at": time.time()})
        self.log(f"webhook {kind} -> {status}")
        return status, text

    def mo_webhook(self, body):
        frm, to, text = body.get("from"), body.get("to"), body.get("text", "")
        if not frm or not to:
            raise ValueError("`from` and `to` are required")
        media = []
        for m in body.get("media_urls") or []:
            if isinstance(m, dict):
                media.append({"url": m["url"], "content_type": m.get("content_type") or guess_type(m["url"])})
            else:
                media.append({"url": m, "content_type": guess_type(m)})
        n = next(self.counter)
        url = self.args.webhook_base.rstrip("/") + MO_PATH
        sign, token = body.get("signature", "ok"), body.get("token", "default")
        if self.style == "generic":
            event = {"id": body.get("id") or f"mo-{n}", "from": frm, "to": to, "text": text,
                     "media": media}
            return self.post_webhook("mo", url, event=event, signature=sign, token=token)
        if self.style == "twilio":
            sid = body.get("id") or "SM" + uuid.uuid4().hex
            params = {"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": str(len(media)),
                      "SmsSid": sid, "SmsStatus": "received", "Body": text, "To": to,
                      "NumSegments": "1", "MessageSid": sid, "AccountSid": self.account_sid,
                      "From": frm, "ApiVersion": "2010-04-01"}
            for i, m in enumerate(media):
                params[f"MediaUrl{i}"] = m["url"]
                params[f"MediaContentType{i}"] = m["content_type"]
            return self.post_webhook("mo", url, params=params, signature=sign, token=token)
        mid = body.get("id") or str(uuid.uuid4())
        event = {"data": {
            "event_type": "message.received", "id": str(uuid.uuid4()), "occurred_at": iso_now(),
            "record_type": "event",
            "payload": {
                "id": mid, "record_type": "message", "direction": "inbound",
                "type": "MMS" if media else "SMS", "messaging_profile_id": None,
                "from": {"phone_number": frm, "carrier": "Test Carrier", "line_type": "Wireless"},
                "to": [{"phone_number": to, "status": "webhook_delivered"}],
                "text": text, "media": [dict(m, size=None, hash_sha256=None) for m in media],
                "received_at": iso_now(), "parts": 1, "encoding": "GSM-7", "errors": []}},
            "meta": {"attempt": 1, "delivered_to": url}}
        return self.post_webhook("mo", url, event=event, signature=sign, token=token)

    def dlr_webhook(self, mid, status, error=None, url=None, record=None, signature="ok",
                    token="default"):
        """A delivery report for carrier id `mid`. status: sent, delivered, undelivered, failed."""
        from_send = url is not None and record is not None and url in (
            record.get("status_callback"), record.get("webhook_url"))
        url = url or self.args.webhook_base.rstrip("/") + DLR_PATH
        rec = record or {}
        post = lambda **kw: self.post_webhook("dlr", url, signature=signature, token=token,  # noqa: E731
                                              url_from_send=from_send, **kw)
        if self.style == "generic":
            err = error if error is not None else GENERIC_ERR.get(status)
            event = {"id": mid, "status": status, "error": err}
            return post(event=event)
        if self.style == "twilio":
            params = {"MessageSid": mid, "SmsSid": mid, "AccountSid": self.account_sid,
                      "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01",
                      "From": rec.get("from") or "", "To": rec.get("to") or ""}
            err = error if error is not None else TWILIO_ERR.get(status)
            if err:
                params["ErrorCode"] = err
            return post(params=params)
        kind = "message.sent" if status == "sent" else "message.finalized"
        st = "sent" if status == "sent" else TELNYX_FINAL.get(status, status)
        errors = []
        if error is not None:
            errors = [{"code": str(error), "title": "Delivery failed"}]
        elif status in TELNYX_ERR:
            errors = [TELNYX_ERR[status]]
        event = {"data": {
            "event_type": kind, "id": str(uuid.uuid4()), "occurred_at": iso_now(),
            "record_type": "event",
            "payload": {
                "id": mid, "record_type": "message", "direction": "outbound", "type": "SMS",
                "from": {"phone_number": rec.get("from"), "carrier": "Test Carrier",
                         "line_type": "Wireless"},
                "to": [{"phone_number": rec.get("to"), "status": st, "carrier": "Test Carrier",
                        "line_type": "Wireless"}],
                "text": rec.get("text"), "parts": 1, "errors": errors,
                "sent_at": iso_now(), "completed_at": None if status == "sent" else iso_now()}},
            "meta": {"attempt": 1, "delivered_to": url}}
        return post(event=event)

    def receipts(self, rec, mode):
        """The receipts a send produces, per the mode."""
        final = mode["receipt"]
        if final == "none":
            return
        url = rec.get("status_callback") or rec.get("webhook_url") or None
        if mode["receipt_sent_first"]:
            self.dlr_webhook(rec["id"], "sent", url=url, record=rec)
        self.dlr_webhook(rec["id"], final, url=url, record=rec)

    def fetch_media(self, rec):
        for m in rec["media"]:
            try:
                with urllib.request.urlopen(m["url"], timeout=10) as r:
                    data = r.read()
                    m.update(fetch_status=r.status, bytes=len(data),
                             content_type=r.headers.get("Content-Type"),
                             sha256=hashlib.sha256(data).hexdigest())
            except urllib.error.HTTPError as e:
                m.update(fetch_status=e.code)
            except (urllib.error.URLError, OSError, ValueError) as e:
                m.update(fetch_status=0, fetch_error=str(e)[:200])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sms-carrier-sim/1"
    carrier: Carrier = None  # set in main

    def log_message(self, fmt, *a):  # no request lines (paths carry ids)
        pass

    # ------------------------------------------------------------------ helpers
    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, obj=None, headers=None, raw=None, ctype="application/json"):
        data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def json_body(self):
        raw = self.body()
        try:
            v = json.loads(raw or b"{}")
        except ValueError:
            return None
        return v if isinstance(v, dict) else None

    # ------------------------------------------------------------------ routes
    def do_GET(self):
        c = self.carrier
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_control/sent":
            with c.lock:
                return self.reply(200, list(c.sent))
        if path == "/_control/webhooks":
            with c.lock:
                return self.reply(200, list(c.webhooks))
        if path == "/_control/mode":
            with c.lock:
                return self.reply(200, dict(c.mode))
        if path == "/_control/telnyx-public-key":
            return self.reply(200, {"public_key": c.public_key_b64})
        if path == "/_control/health":
            return self.reply(200, {"ok": True, "style": c.style})
        return self.reply(404, {"error": "not found"})

    def do_POST(self):
        c = self.carrier
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_control/"):
            return self.control(path)
        if c.style == "generic" and path == "/messages":
            return self.send_generic()
        if c.style == "telnyx" and path == "/v2/messages":
            return self.send_telnyx()
        parts = path.split("/")
        if (c.style == "twilio" and len(parts) == 5 and parts[1] == "2010-04-01"
                and parts[2] == "Accounts" and parts[4] == "Messages.json"):
            return self.send_twilio(parts[3])
        self.body()
        return self.reply(404, {"error": f"no such endpoint for style {c.style}"})

    def control(self, path):
        c = self.carrier
        body = self.json_body()
        if body is None:
            return self.reply(400, {"error": "the body must be a JSON object"})
        try:
            if path == "/_control/mode":
                return self.reply(200, c.set_mode(body))
            if path == "/_control/reset":
                c.reset()
                return self.reply(200, {"ok": True})
            if path == "/_control/mo":
                status, text = c.mo_webhook(body)
                return self.reply(status or 502, raw=text.encode(), ctype="application/json")
            if path == "/_control/dlr":
                if not body.get("id") or not body.get("status"):
                    raise ValueError("`id` and `status` are required")
                with c.lock:
                    rec = next((r for r in c.sent if r["id"] == body["id"]), None)
                status, text = c.dlr_webhook(
                    body["id"], body["status"], error=body.get("error"), url=body.get("url"),
                    record=rec, signature=body.get("signature", "ok"),
                    token=body.get("token", "default"))
                return self.reply(status or 502, raw=text.encode(), ctype="application/json")
        except (ValueError, KeyError, TypeError) as e:
            return self.reply(400, {"error": str(e)})
        return self.reply(404, {"error": "no such control endpoint"})

    def bearer_ok(self):
        key = self.carrier.args.key
        return key is None or self.headers.get("Authorization", "") == f"Bearer {key}"

    def record(self, **kw):
        c = self.carrier
        rec = {"n": 0, "id": None, "reference": None, "from": None, "to": None, "text": None,
               "media_urls": [], "media": [], "status_callback": None, "webhook_url": None,
               "authorization": self.headers.get("Authorization"),
               "content_type": self.headers.get("Content-Type"),
               "user_agent": self.headers.get("User-Agent"), "answer": None, "repeat": False,
               "at": time.time()}
        rec.update(kw)
        rec["media"] = [{"url": u} for u in rec["media_urls"]]
        with c.lock:
            rec["n"] = len(c.sent) + 1
            c.sent.append(rec)
        return rec

    def finish_send(self, rec, ok_status, ok_body, errors):
        """Answer per the mode; schedule receipts and media fetches for accepted sends."""
        c = self.carrier
        ans, mode = c.next_answer()
        rec["answer"] = "hang" if ans == "hang" else (ok_status if ans == "ok" else int(ans))
        c.log(f"send #{rec['n']} -> {rec['answer']}")
        if ans == "hang":
            time.sleep(mode["hang_ms"] / 1000)
            self.close_connection = True
            return
        if ans != "ok":
            rec["id"] = None
            status = int(ans)
            hdrs = {"Retry-After": mode["retry_after"]} if status == 429 else None
            return self.reply(status, errors[status], headers=hdrs)
        if mode["fetch_media"] and rec["media"]:
            threading.Thread(target=c.fetch_media, args=(rec,), daemon=True).start()
        if mode["receipt_before_answer"]:
            c.receipts(rec, mode)
        elif mode["receipt"] != "none":
            t = threading.Timer(mode["receipt_delay_ms"] / 1000, c.receipts, args=(rec, mode))
            t.daemon = True
            t.start()
        return self.reply(ok_status, ok_body)

    # ------------------------------------------------------------------ styles
    def send_generic(self):
        v = self.json_body()
        if not self.bearer_ok():
            return self.reply(401, {"error": "invalid API key"})
        if v is None:
            return self.reply(400, {"error": "the body is not a JSON object"})
        if not v.get("from") or not v.get("to"):
            return self.reply(400, {"error": "`from` and `to` are required"})
        ref = v.get("reference")
        media_urls = [m.get("url") for m in v.get("media") or [] if isinstance(m, dict)]
        c = self.carrier
        with c.lock:
            known = c.by_reference.get(ref) if ref else None
        rec = self.record(reference=ref, to=v.get("to"), text=v.get("text"),
                          media_urls=media_urls, repeat=known is not None,
                          **{"from": v.get("from")})
        rec["id"] = known or f"c-{next(c.counter)}"
        errors = {400: {"error": "invalid destination number"},
                  429: {"error": "rate limited"},
                  500: {"error": "internal error"}}
        if known:
            # The same reference is one message: same id, no second receipt.
            rec["answer"] = 200
            return self.reply(200, {"id": known, "status": "queued"})
        ok = {"id": rec["id"], "status": "queued"}
        result = self.finish_send(rec, 201, ok, errors)
        if rec["answer"] == 201 and ref:
            with c.lock:
                c.by_reference[ref] = rec["id"]
        return result

    def send_twilio(self, sid):
        c = self.carrier
        raw = self.body()
        auth = self.headers.get("Authorization", "")
        user, pw = "", ""
        if auth.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                pass
        unauth = {"code": 20003, "message": "Authenticate",
                  "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
        if user != sid or pw != c.args.twilio_token:
            return self.reply(401, unauth)
        pairs = urllib.parse.parse_qsl(raw.decode(errors="replace"), keep_blank_values=True)
        get = lambda k: next((b for a, b in pairs if a == k), None)  # noqa: E731
        media_urls = [b for a, b in pairs if a == "MediaUrl"]
        if not get("To") or not (get("From") or get("MessagingServiceSid")):
            return self.reply(400, {"code": 21604, "message": "A 'To' phone number is required.",
                                    "more_info": "https://www.twilio.com/docs/errors/21604",
                                    "status": 400})
        if not get("Body") and not media_urls:
            return self.reply(400, {"code": 21602, "message": "Message body is required.",
                                    "more_info": "https://www.twilio.com/docs/errors/21602",
                                    "status": 400})
        rec = self.record(to=get("To"), text=get("Body"), media_urls=media_urls,
                          status_callback=get("StatusCallback"), **{"from": get("From")})
        rec["id"] = "SM" + uuid.uuid4().hex
        now = email.utils.formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{sid}/Messages/{rec['id']}"
        ok = {"account_sid": sid, "api_version": "2010-04-01", "body": get("Body") or "",
              "date_created": now, "date_sent": None, "date_updated": now,
              "direction": "outbound-api", "error_code": None, "error_message": None,
              "from": get("From"), "messaging_service_sid": get("MessagingServiceSid"),
              "num_media": str(len(media_urls)), "num_segments": "1", "price": None,
              "price_unit": "USD", "sid": rec["id"], "status": "queued",
              "subresource_uris": {"media": uri + "/Media.json"}, "to": get("To"),
              "uri": uri + ".json"}

        def terr(code, status, msg):
            return {"code": code, "message": msg,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
        errors = {400: terr(21211, 400, "Invalid 'To' Phone Number"),
                  429: terr(20429, 429, "Too Many Requests"),
                  500: terr(20500, 500, "Internal Server Error")}
        return self.finish_send(rec, 201, ok, errors)

    def send_telnyx(self):
        v = self.json_body()
        if not self.bearer_ok():
            return self.reply(401, {"errors": [{"code": "10009", "title": "Authentication failed",
                                                "detail": "The API key is invalid."}]})
        if v is None:
            return self.reply(400, {"errors": [{"code": "10015", "title": "Bad request",
                                                "detail": "The body is not valid JSON."}]})
        to = v.get("to")
        if isinstance(to, list):
            to = to[0] if to else None
        if not to or not v.get("from"):
            return self.reply(400, {"errors": [{"code": "40310", "title": "Invalid 'to' address",
                                                "detail": "'from' and 'to' are required."}]})
        media_urls = list(v.get("media_urls") or [])
        rec = self.record(to=to, text=v.get("text"), media_urls=media_urls,
                          webhook_url=v.get("webhook_url"), **{"from": v.get("from")})
        rec["id"] = str(uuid.uuid4())
        ok = {"data": {
            "record_type": "message", "direction": "outbound", "id": rec["id"],
            "type": "MMS" if media_urls else "SMS", "messaging_profile_id": None,
            "organization_id": None,
            "from": {"phone_number": v.get("from"), "carrier": "Test Carrier",
                     "line_type": "Wireless"},
            "to": [{"phone_number": to, "status": "queued", "carrier": "Test Carrier",
                    "line_type": "Wireless"}],
            "text": v.get("text"), "media": [{"url": u} for u in media_urls],
            "webhook_url": v.get("webhook_url"), "webhook_failover_url": None,
            "encoding": "GSM-7", "parts": 1, "tags": [], "cost": None,
            "received_at": iso_now(), "sent_at": None, "completed_at": None,
            "valid_until": None, "errors": []}}

        def terr(code, title):
            return {"errors": [{"code": code, "title": title, "detail": title}]}
        errors = {400: terr("40310", "Invalid 'to' address"),
                  429: terr("10011", "Too many requests"),
                  500: terr("10007", "Unexpected error")}
        return self.finish_send(rec, 200, ok, errors)


def main():
    ap = argparse.ArgumentParser(description="HTTP SMS carrier simulator (generic, twilio, telnyx)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--style", choices=["generic", "twilio", "telnyx"], required=True)
    ap.add_argument("--webhook-base", required=True,
                    help="commhub's base URL, e.g. http://127.0.0.1:8080 (its public_base_url)")
    ap.add_argument("--token", default=None, help="webhook token (INBOUND_WEBHOOK_TOKEN)")
    ap.add_argument("--token-in", choices=["header", "query"], default=None,
                    help="how the webhook token travels (default: header for generic, else query)")
    ap.add_argument("--key", default=None, help="check this Bearer key on sends (generic, telnyx)")
    ap.add_argument("--twilio-token", default=None,
                    help="the auth token: Basic password on sends and the webhook signing key")
    ap.add_argument("--telnyx-key-out", default=None,
                    help="write the Ed25519 public key (base64 of the raw 32 bytes) here")
    ap.add_argument("--tls-port", type=int, default=None,
                    help="also serve the same endpoints over TLS on this port")
    ap.add_argument("--tls-cert", default=None, help="PEM certificate for --tls-port")
    ap.add_argument("--tls-key", default=None, help="PEM private key for --tls-port")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.tls_port and not (args.tls_cert and args.tls_key):
        ap.error("--tls-port needs --tls-cert and --tls-key")
    if args.style == "twilio" and not args.twilio_token:
        ap.error("--style twilio needs --twilio-token")
    if args.telnyx_key_out and args.style != "telnyx":
        ap.error("--telnyx-key-out is for --style telnyx")

    carrier = Carrier(args)
    if args.telnyx_key_out:
        tmp = args.telnyx_key_out + ".tmp"
        with open(tmp, "w") as f:
            f.write(carrier.public_key_b64 + "\n")
        os.replace(tmp, args.telnyx_key_out)
    Handler.carrier = carrier
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_port:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        tls_server = ThreadingHTTPServer(("127.0.0.1", args.tls_port), Handler)
        tls_server.daemon_threads = True
        tls_server.socket = ctx.wrap_socket(tls_server.socket, server_side=True)
        threading.Thread(target=tls_server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
