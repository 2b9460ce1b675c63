-- 0004: position statuses defined once (bot/core/db/positions.py), quote coverage of research rows

ALTER TABLE positions ADD CONSTRAINT positions_status_known
    CHECK (status IN ('intent', 'orders_sent', 'open', 'closing', 'closed', 'failed', 'unwound'));

-- share of the window's bars backed by quote ticks of both legs (the rest traded on bar closes)
ALTER TABLE pair_stats ADD COLUMN coverage double precision;
ALTER TABLE selection_candidates ADD COLUMN coverage double precision;
