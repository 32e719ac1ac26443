#!/usr/bin/env bash
# Entrypoint for the `jasmin` service in docker/compose.yml: patch listeners.py, then hand over
# to the image's own entrypoint (/docker-entrypoint.sh of jookies/jasmin, which writes the
# Redis/AMQP hosts into /etc/jasmin/jasmin.cfg, removes stale /tmp/*.lock files and execs the
# command).
#
# Jasmin 0.11.1 (PyPI, and images built from it) drops every delivery receipt:
# SMPPClientSMListener.submit_sm_resp_event in jasmin/managers/listeners.py builds the DLR from
# `_pdu.response`, but `_pdu` is the SubmitSM request, which has no `.response`
# (AttributeError on every submit_sm_resp, so every receipt ends in DLRMapNotFound). Fixed
# upstream in commit a3635cc (2026-04-15), not released. Use the submit_sm_resp wrapper
# `r.response` instead. On an image that has the fix, the sed changes nothing and the check
# below passes. Same patch as scripts/jasmin.sh install (docs/sms-design.md 2.2).
set -euo pipefail

L="$(python3 -c 'import jasmin.managers.listeners as m; print(m.__file__)')"
if grep -q '_pdu\.response\.' "$L"; then
  sed -i 's/_pdu\.response\./r.response./g' "$L"
  echo "commhub: patched $L (_pdu.response. -> r.response.)"
fi
if grep -q '_pdu\.response\.' "$L" || ! grep -q 'r\.response\.id' "$L"; then
  echo "commhub: the listeners.py patch did not apply to $L: Jasmin would drop every delivery receipt" >&2
  exit 1
fi

exec /docker-entrypoint.sh "$@"
