#!/usr/bin/env bash
# Run commhub's whole test suite (the command the README gives).
# The Rust integration tests drive the Python clients in tests/clients and the browser test in
# tests/browser through these variables; run scripts/setup-test-deps.sh once first.
# Extra arguments go to cargo nextest (or cargo test), e.g. scripts/test.sh -E 'test(whip)'.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ -d "$HOME/.cargo/bin" ] && ! command -v cargo >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

export COMMHUB_TEST_PYTHON="${COMMHUB_TEST_PYTHON:-$REPO/.venv/bin/python}"
export COMMHUB_TEST_NODE="${COMMHUB_TEST_NODE:-node}"
# The PostgreSQL the store tests use (setup-test-deps.sh starts it and creates the role).
if [ -z "${COMMHUB_TEST_DATABASE_URL:-}" ]; then
  pg_port="$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $3}')"
  export COMMHUB_TEST_DATABASE_URL="postgres://commhub:commhub@127.0.0.1:${pg_port:-5432}/postgres"
fi

if [ ! -x "$COMMHUB_TEST_PYTHON" ] && ! command -v "$COMMHUB_TEST_PYTHON" >/dev/null 2>&1; then
  echo "test.sh: warning: $COMMHUB_TEST_PYTHON not found; run scripts/setup-test-deps.sh" >&2
fi

echo "==> [test] COMMHUB_TEST_PYTHON=$COMMHUB_TEST_PYTHON COMMHUB_TEST_NODE=$COMMHUB_TEST_NODE COMMHUB_TEST_DATABASE_URL=${COMMHUB_TEST_DATABASE_URL%%:commhub@*}:***@${COMMHUB_TEST_DATABASE_URL#*@}"
if cargo nextest --version >/dev/null 2>&1; then
  echo "==> [test] cargo nextest run --workspace --no-fail-fast $*"
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "==> [test] cargo-nextest not found; cargo test --workspace --no-fail-fast $*"
  exec cargo test --workspace --no-fail-fast "$@"
fi
