-- 0003: the model's dataset: one row per (rolling window, pair), statistics + target

CREATE TABLE model_dataset (
    dataset_id   bigint NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    window_id    integer NOT NULL,
    train_start  timestamptz NOT NULL,
    valid_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    coin1        text NOT NULL,
    coin2        text NOT NULL,
    features     jsonb NOT NULL,
    pr_test      double precision,
    pr_rat_test  double precision,
    PRIMARY KEY (dataset_id, window_id, coin1, coin2)
);
