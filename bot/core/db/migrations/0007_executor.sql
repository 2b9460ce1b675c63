-- 0007: the live executor (docs/executor.md): a per-installation orderLinkId prefix,
-- positions with their exact tick times and close reason, orders per leg and action,
-- incidents, one active position per pair.

-- one row: created at this migration, so orderLinkIds differ across database resets and
-- across bot installations trading one account (Bybit refuses a repeated orderLinkId, and
-- an old order found under a repeated id would be taken for the new one's fill)
CREATE TABLE installation (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    link_prefix  text NOT NULL CHECK (link_prefix ~ '^[a-z0-9]{4,8}$'),
    created_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation (link_prefix)
VALUES (substr(md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text), 1, 6));

ALTER TABLE positions DROP CONSTRAINT positions_status_known;
ALTER TABLE positions ADD CONSTRAINT positions_status_known
    CHECK (status IN ('intent', 'orders_sent', 'open', 'closing', 'closed', 'failed', 'unwinding',
                      'unwound', 'lost'));
ALTER TABLE positions
    ADD COLUMN open_ts       double precision,   -- venue time of the tick the entry filled at (epoch s)
    ADD COLUMN close_ts      double precision,
    ADD COLUMN close_reason  smallint,           -- 1 exit, 2 stop-loss, 3 force, 4 liquidation
    ADD COLUMN close_z       double precision,
    ADD COLUMN decision_z    double precision,   -- z of the tick the entry was decided on
    ADD COLUMN note          text;
-- never two active positions on one pair: the database refuses a double open
CREATE UNIQUE INDEX positions_one_active ON positions (token_1, token_2)
    WHERE status IN ('intent', 'orders_sent', 'open', 'closing', 'unwinding');

ALTER TABLE orders
    ADD COLUMN leg      smallint CHECK (leg IN (1, 2)),
    ADD COLUMN action   text CHECK (action IN ('open', 'close', 'unwind')),
    ADD COLUMN attempt  smallint NOT NULL DEFAULT 0,
    ADD COLUMN fill_ts  double precision;      -- venue time of the fill (epoch s)

ALTER TABLE trades
    ADD COLUMN open_ts  double precision,
    ADD COLUMN close_ts double precision,
    ADD COLUMN fees_1   numeric,
    ADD COLUMN fees_2   numeric;

CREATE TABLE incidents (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    kind             text NOT NULL,
    token_1          text,
    token_2          text,
    position_id      bigint REFERENCES positions (id),
    order_link_id    text,
    message          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    acknowledged_at  timestamptz
);
CREATE INDEX incidents_open ON incidents (at) WHERE acknowledged_at IS NULL;
