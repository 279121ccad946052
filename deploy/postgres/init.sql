-- Runs once, when the compose PostgreSQL volume is first created (docker-entrypoint-initdb.d).
-- The registry's schema itself is owned by its Alembic migrations, applied by the service at start.

ALTER DATABASE puyu SET timezone TO 'UTC';

-- A scratch database for the registry's PostgreSQL tests (PUYU_TEST_POSTGRES_URL), so running them
-- against the compose stack never touches the live registry.
CREATE DATABASE puyu_test OWNER puyu;
ALTER DATABASE puyu_test SET timezone TO 'UTC';
