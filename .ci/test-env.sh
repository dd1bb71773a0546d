# Sourced by `make test`: chooses the test database, broker and browser.
# With DATABASE_URL unset, a PostgreSQL on 127.0.0.1:5432 is used when one answers, else SQLite
# (then tests marked postgres/redis skip, unless RAPPORT_REQUIRE_SERVICES=1 makes them fail, as in CI).

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if [ -z "${DATABASE_URL:-}" ] && pg_up && command -v psql >/dev/null; then
  export DATABASE_URL="postgres://rapport@127.0.0.1:5432/rapport"
fi
if [ -n "${DATABASE_URL:-}" ] && [[ "$DATABASE_URL" == postgres* ]]; then
  # The app connects as a role that is neither superuser nor BYPASSRLS, so row-level security applies.
  bash .ci/prepare-postgres.sh || { echo "Could not prepare the PostgreSQL role 'rapport'"; return 1; }
fi
if [ -z "${RAPPORT_TEST_REDIS_URL:-}" ] && redis_up; then
  export RAPPORT_TEST_REDIS_URL="redis://127.0.0.1:6379/15"
fi
# Browser tests drive Debian's Chromium; install it when missing and we may (never a downloaded browser).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for browser tests…"
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "chromium could not be installed; browser tests will skip (or fail when RAPPORT_REQUIRE_SERVICES=1)"
fi
# docker-compose.yml is validated by the compose CLI (no engine needed); Debian's docker-compose provides one.
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's docker-compose to validate docker-compose.yml…"
  (apt-get install -y -q docker-compose >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1)) \
    || echo "docker-compose could not be installed; the compose validation test will skip (or fail when RAPPORT_REQUIRE_SERVICES=1)"
fi
export RAPPORT_TESTING=1
