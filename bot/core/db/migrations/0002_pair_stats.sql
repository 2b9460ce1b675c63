-- 0002: per-pair research results of a run (selection.md section 2), skipped and failed pairs included

CREATE TABLE pair_stats (
    run_id         bigint NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    coin1          text NOT NULL,
    coin2          text NOT NULL,
    status         text NOT NULL,            -- ok, skipped, failed
    reason         text NOT NULL DEFAULT '',
    std_1          double precision,
    std_2          double precision,
    corr           double precision,
    dist           double precision,
    std            double precision,
    pv_1           double precision,
    pv_2           double precision,
    pr_ind         double precision,
    pr_rat_ind     double precision,
    avg_pr_all     double precision,
    pr_rat_all     double precision,
    pr_best        double precision,
    pr_rat_best    double precision,
    loss_best      double precision,
    max_drdn_best  double precision,
    dur_best       double precision,
    trades_best    double precision,
    best_param_id  double precision,
    pr_test        double precision,
    pr_rat_test    double precision,
    loss_test      double precision,
    max_drdn_test  double precision,
    dur_test       double precision,
    trades_test    double precision,
    PRIMARY KEY (run_id, coin1, coin2)
);
CREATE INDEX pair_stats_pair ON pair_stats (coin1, coin2);
