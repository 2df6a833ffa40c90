-- Scratch tables for the pgbench floor check (docs/benchmarks.md, "ORM hooks overhead"):
-- the task and outbox columns, no ORM, no Python.
DROP TABLE IF EXISTS floor_task, floor_outbox;
CREATE TABLE floor_task (
    id serial PRIMARY KEY, user_id varchar(255) NOT NULL, title varchar(255) NOT NULL,
    description text, completed boolean NOT NULL, due_date timestamptz,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL
);
CREATE INDEX ON floor_task (user_id);
CREATE TABLE floor_outbox (
    seq bigserial PRIMARY KEY, event_id varchar(64) NOT NULL, topic varchar(255) NOT NULL,
    partition_key varchar(255) NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL, last_error text
);
