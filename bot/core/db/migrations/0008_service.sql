-- `bot run` as a service (issue 14): replays trade beside the live ledger, and the
-- service records its runs (start, READY, stop, heartbeat) for `bot status`.

-- one active position per pair AND mode: a replay run (mode 'replay-<run>') never collides
-- with the live or paper ledger it runs beside
DROP INDEX positions_one_active;
CREATE UNIQUE INDEX positions_one_active ON positions (mode, token_1, token_2)
    WHERE status IN ('intent', 'orders_sent', 'open', 'closing', 'unwinding');

CREATE TABLE service_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    ready_at      timestamptz,                 -- reconciliation done, trading
    stopped_at    timestamptz,
    heartbeat_at  timestamptz,
    pid           integer NOT NULL,
    host          text NOT NULL,
    mode          text NOT NULL,               -- paper, live, replay-<id>
    stop_reason   text,                        -- SIGTERM, SIGINT, fatal: ..., replay done
    exit_code     integer,
    balance       numeric,                     -- the executor's sizing balance at the last heartbeat
    status        jsonb                        -- pairs, open positions, stream and recorder state
);
CREATE INDEX service_runs_started ON service_runs (started_at DESC);

-- incidents of a replay are the replay's: `bot status` shows the service's own
ALTER TABLE incidents ADD COLUMN mode text;
