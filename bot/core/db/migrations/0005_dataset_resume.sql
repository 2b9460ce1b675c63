-- 0005: resumable datasets (one commit per finished window) and the test window's
-- skipped entries and liquidations beside its profit

-- test-window counts of the best parameter set (selection.md section 2 targets)
ALTER TABLE pair_stats ADD COLUMN skipped_test double precision;
ALTER TABLE pair_stats ADD COLUMN liquidations_test double precision;

ALTER TABLE model_dataset ADD COLUMN trades_test double precision;
ALTER TABLE model_dataset ADD COLUMN skipped_test double precision;
ALTER TABLE model_dataset ADD COLUMN liquidations_test double precision;

-- one row per `bot dataset` build: the hash of everything that decides its rows
CREATE TABLE dataset_builds (
    dataset_id  bigint PRIMARY KEY REFERENCES backtest_runs (id) ON DELETE CASCADE,
    args_hash   text NOT NULL,
    args        jsonb NOT NULL,
    windows     integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dataset_builds_args_hash ON dataset_builds (args_hash, dataset_id);

-- a window is done when its row is here; its model_dataset rows commit in the same transaction
CREATE TABLE dataset_windows (
    dataset_id    bigint NOT NULL REFERENCES dataset_builds (dataset_id) ON DELETE CASCADE,
    window_id     integer NOT NULL,
    sweep_run_id  bigint,
    rows          integer NOT NULL,
    wall_s        double precision,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, window_id)
);
