#!/usr/bin/env python3
"""Drive Jasmin's jcli console (telnet-style, 127.0.0.1:<jcli port>) without a person.

Standard library only. Used by the SMPP tests and by docker/compose.yml's one-shot setup job
(docs/sms-design.md section 2.4).

  jcli.py [--host H] [--port 18990] [--login jcliadmin] [--jcli-password jclipwd] [-v] COMMAND

  setup    --connector CID --upstream-port P --user SYSTEM_ID --password PW (<= 8 chars)
           [--upstream-host 127.0.0.1] [--upstream-username jasmin] [--upstream-password jpwd]
           [--group commhub] [--throughput N] [--bind-timeout 15] [--persist]
      Creates the upstream SMPP client connector CID (host 127.0.0.1, bind transceiver,
      submit_throughput 0, upstream username/password jasmin/jpwd unless given), starts it, waits until
      `smppccm -l` shows it BOUND_TRX, replaces the default MT route with smppc(CID), creates the
      group (if missing) and the user (optionally with an smpps_throughput quota), and replaces
      the default MO route with smpps(SYSTEM_ID). An existing connector or user of the same id
      is replaced.
  teardown --connector CID --user SYSTEM_ID
      Stops and removes the connector and removes the user (missing ones are skipped).
  quota    --user SYSTEM_ID --throughput N|none
      Sets (or removes) the user's smpps_throughput quota (messages/s Jasmin accepts).
  raw      "COMMAND" ...
      Sends each argument as one jcli line (a block such as "user -a" takes the following
      arguments until "ok") and prints the answers.

Exit status 1 (with the message on stderr) when jcli answers Unknown, Error, Invalid,
Incorrect or Failed, or when a prompt or the bind does not come in time. Passwords are never
printed: the transcript (-v, on stderr) masks them.
"""

import argparse
import re
import socket
import sys
import time

PROMPT_MAIN = b"jcli : "
PROMPT_BLOCK = b"> "
FAIL = re.compile(r"\b(Unknown|Error|Invalid|Incorrect|Failed|You must set|Nothing to save)\b")
IAC_SEQ = re.compile(rb"\xff[\xfb-\xfe].|\xff[\xf0-\xfa]", re.S)
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])")


class JcliError(Exception):
    pass


class Jcli:
    def __init__(self, host, port, login, password, verbose=False, timeout=10.0):
        self.verbose = verbose
        self.timeout = timeout
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise JcliError(f"cannot connect to jcli at {host}:{port}: {e}") from e
        self.buf = b""
        self._read_until("the login banner", contains=[b"Authentication required."])
        self._send_line(login)
        self._read_until("the password prompt", ends=[b"Password: "])
        self._send_line(password, secret=True)
        out = self._read_until("the jcli prompt", ends=[PROMPT_MAIN], contains=[b"Incorrect"])
        if not out.endswith(PROMPT_MAIN.decode()):
            raise JcliError("jcli login refused (wrong user name or password)")

    def close(self):
        try:
            self.sock.sendall(b"quit\r\n")
        except OSError:
            pass
        self.sock.close()

    def _log(self, text):
        if self.verbose:
            sys.stderr.write(text)
            sys.stderr.flush()

    def _send_line(self, line, secret=False):
        self._log(("<secret>" if secret else line) + "\n")
        self.sock.sendall(line.encode() + b"\r\n")

    def _read_until(self, what, ends=(), contains=()):
        """Read until the output ends with a prompt in `ends` (at the start of a line) or
        contains a marker in `contains`; return the text up to there (telnet negotiation and
        terminal escapes removed, CRs dropped) and keep the rest."""
        deadline = time.monotonic() + self.timeout
        while True:
            clean = IAC_SEQ.sub(b"", self.buf)
            cut = -1
            for m in contains:
                i = clean.find(m)
                if i >= 0:
                    cut = i + len(m)
                    break
            if cut < 0:
                for m in ends:
                    if clean.endswith(b"\n" + m) or clean == m:
                        cut = len(clean)
                        break
            if cut >= 0:
                self.buf = clean[cut:]
                return ANSI.sub("", clean[:cut].decode(errors="replace")).replace("\r", "")
            left = deadline - time.monotonic()
            if left <= 0:
                tail = ANSI.sub("", clean.decode(errors="replace"))[-300:]
                raise JcliError(f"no {what} from jcli within {self.timeout:.0f} s; got: {tail!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise JcliError(f"jcli closed the connection while waiting for {what}")
            self.buf += chunk

    def cmd(self, line, check=True, secret=False):
        """Send one line; return jcli's answer (without the echo and the prompt)."""
        self._send_line(line, secret=secret)
        out = self._read_until(f"answer to {line.split()[0]!r}", ends=[PROMPT_MAIN, PROMPT_BLOCK])
        lines = out.split("\n")[:-1]  # the last line is the next prompt
        # The console echoes what we type (telnet WILL ECHO): drop the echo, which would show
        # the password and could contain a failure word.
        if lines and lines[0].strip() == line.strip():
            lines = lines[1:]
        answer = "\n".join(s for s in (x.strip() for x in lines) if s)
        self._log(answer + ("\n" if answer else ""))
        if check and FAIL.search(answer):
            shown = "password <secret>" if secret else line
            raise JcliError(f"jcli refused {shown!r}: {answer}")
        return answer

    def block(self, opener, fields, secret_keys=("password",)):
        """`opener` (e.g. "user -a"), then `key value` lines, then `ok`."""
        self.cmd(opener)
        for key, value in fields:
            self.cmd(f"{key} {value}", secret=key in secret_keys)
        return self.cmd("ok")

    # ---- queries
    def connectors(self):
        """{cid: (service, session)} from `smppccm -l`."""
        out = self.cmd("smppccm -l")
        res = {}
        for line in out.split("\n"):
            parts = line.lstrip("#").split()
            if line.startswith("#") and len(parts) >= 3 and parts[0] != "Connector":
                res[parts[0]] = (parts[1], parts[2])
        return res

    def ids(self, command, header):
        out = self.cmd(command)
        return {
            line.lstrip("#").split()[0]
            for line in out.split("\n")
            if line.startswith("#") and line.lstrip("#").split() and
            line.lstrip("#").split()[0] != header
        }


def setup(j, a):
    t0 = time.monotonic()
    for name in ("upstream_host", "upstream_username", "upstream_password", "user", "password"):
        if not getattr(a, name).strip():
            raise JcliError(f"--{name.replace('_', '-')} is empty")
    if len(a.password) > 8:
        raise JcliError(f"--password is {len(a.password)} characters; SMPP 3.4 allows at most 8")
    if len(a.user) > 15:
        raise JcliError(f"--user is {len(a.user)} characters; SMPP 3.4 allows at most 15")
    if a.connector in j.connectors():
        j.cmd(f"smppccm -0 {a.connector}", check=False)
        j.cmd(f"smppccm -r {a.connector}")
    j.block("smppccm -a", [
        ("cid", a.connector),
        ("host", a.upstream_host),
        ("port", a.upstream_port),
        ("username", a.upstream_username),
        ("password", a.upstream_password),
        ("bind", "transceiver"),
        ("submit_throughput", "0"),
    ])
    j.cmd(f"smppccm -1 {a.connector}")
    t_started = time.monotonic()
    deadline = t_started + a.bind_timeout
    while True:
        state = j.connectors().get(a.connector, ("?", "?"))
        if state[1] == "BOUND_TRX":
            break
        if time.monotonic() > deadline:
            raise JcliError(f"connector {a.connector} is {state[0]} {state[1]}, not BOUND_TRX, "
                            f"{a.bind_timeout:.0f} s after starting it (is the upstream SMSC on "
                            f"{a.upstream_host}:{a.upstream_port}?)")
        time.sleep(0.05)
    t_bound = time.monotonic()
    j.block("mtrouter -a", [("type", "defaultroute"), ("connector", f"smppc({a.connector})"),
                            ("rate", "0.00")])
    if a.group not in j.ids("group -l", "Group"):
        j.block("group -a", [("gid", a.group)])
    user_fields = [("username", a.user), ("password", a.password), ("gid", a.group),
                   ("uid", a.user)]
    if a.throughput is not None:
        user_fields.append(("mt_messaging_cred", f"quota smpps_throughput {a.throughput}"))
    j.block("user -a", user_fields)
    j.block("morouter -a", [("type", "defaultroute"), ("connector", f"smpps({a.user})")])
    if a.persist:
        j.cmd("persist")
    t1 = time.monotonic()
    print(f"jcli setup: connector {a.connector} BOUND_TRX {t_bound - t_started:.2f} s after "
          f"start; user {a.user} in group {a.group}"
          + (f", smpps_throughput {a.throughput}" if a.throughput is not None else "")
          + f"; default MT and MO routes replaced; {t1 - t0:.2f} s in all")


def teardown(j, a):
    conns = j.connectors()
    if a.connector in conns:
        if conns[a.connector][0] == "started":
            j.cmd(f"smppccm -0 {a.connector}")
        j.cmd(f"smppccm -r {a.connector}")
        print(f"jcli teardown: connector {a.connector} removed")
    else:
        print(f"jcli teardown: no connector {a.connector}")
    if a.user in j.ids("user -l", "User"):
        j.cmd(f"user -r {a.user}")
        print(f"jcli teardown: user {a.user} removed")
    else:
        print(f"jcli teardown: no user {a.user}")


def quota(j, a):
    j.block(f"user -u {a.user}", [("mt_messaging_cred", f"quota smpps_throughput {a.throughput}")])
    print(f"jcli quota: user {a.user} smpps_throughput {a.throughput}")


def raw(j, a):
    for line in a.commands:
        secret = line.strip().startswith("password ")
        answer = j.cmd(line, secret=secret)
        if answer:
            print(answer)


def throughput(v):
    if v == "none":
        return v
    try:
        if float(v) <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError("a positive number or `none`") from None
    return v


def main():
    ap = argparse.ArgumentParser(description="Drive Jasmin's jcli console.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18990, help="jcli port (default 18990)")
    ap.add_argument("--login", default="jcliadmin")
    ap.add_argument("--jcli-password", default="jclipwd")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per jcli answer")
    ap.add_argument("-v", "--verbose", action="store_true", help="transcript on stderr")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("setup")
    s.add_argument("--connector", required=True)
    s.add_argument("--upstream-host", default="127.0.0.1")
    s.add_argument("--upstream-port", required=True, type=int)
    s.add_argument("--upstream-username", default="jasmin",
                   help="system_id Jasmin binds to the upstream with (default jasmin)")
    s.add_argument("--upstream-password", default="jpwd")
    s.add_argument("--user", required=True)
    s.add_argument("--password", required=True)
    s.add_argument("--group", default="commhub")
    s.add_argument("--throughput", type=throughput, default=None,
                   help="smpps_throughput quota for the user (messages/s)")
    s.add_argument("--bind-timeout", type=float, default=15.0)
    s.add_argument("--persist", action="store_true", help="persist the configuration")
    s.set_defaults(fn=setup)

    t = sub.add_parser("teardown")
    t.add_argument("--connector", required=True)
    t.add_argument("--user", required=True)
    t.set_defaults(fn=teardown)

    q = sub.add_parser("quota")
    q.add_argument("--user", required=True)
    q.add_argument("--throughput", required=True, type=throughput)
    q.set_defaults(fn=quota)

    r = sub.add_parser("raw")
    r.add_argument("commands", nargs="+")
    r.set_defaults(fn=raw)

    a = ap.parse_args()
    j = None
    try:
        j = Jcli(a.host, a.port, a.login, a.jcli_password, a.verbose, a.timeout)
        a.fn(j, a)
    except (JcliError, OSError) as e:
        print(f"jcli.py: {e}", file=sys.stderr)
        return 1
    finally:
        if j is not None:
            j.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
