-- 0001: the bot's schema. Times are timestamptz (UTC); money in numeric where it is an order.

CREATE TABLE instruments (
    symbol         text PRIMARY KEY,             -- exchange symbol, e.g. JASMYUSDT
    base_coin      text NOT NULL,                -- token, e.g. JASMY
    qty_step       numeric NOT NULL CHECK (qty_step > 0),
    min_qty        numeric NOT NULL CHECK (min_qty >= 0),
    max_qty        numeric,
    max_mkt_qty    numeric,
    min_notional   numeric NOT NULL DEFAULT 0,
    tick_size      numeric NOT NULL CHECK (tick_size > 0),
    price_scale    integer NOT NULL,
    status         text NOT NULL DEFAULT 'Trading',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- top-of-book ticks, partitioned by day (partitions are created on demand)
CREATE TABLE quotes (
    symbol     text NOT NULL,
    ts         timestamptz NOT NULL,
    bid_price  double precision NOT NULL CHECK (bid_price > 0),
    ask_price  double precision NOT NULL CHECK (ask_price > 0),
    bid_size   double precision NOT NULL CHECK (bid_size >= 0),
    ask_size   double precision NOT NULL CHECK (ask_size >= 0),
    PRIMARY KEY (symbol, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE bars (
    symbol     text NOT NULL,
    tf         text NOT NULL,
    open_time  timestamptz NOT NULL,
    open       double precision NOT NULL,
    high       double precision NOT NULL,
    low        double precision NOT NULL,
    close      double precision NOT NULL CHECK (close > 0),
    volume     double precision NOT NULL DEFAULT 0,
    source     text NOT NULL DEFAULT 'quotes',
    PRIMARY KEY (symbol, tf, open_time)
);
CREATE INDEX bars_tf_time ON bars (tf, open_time);

-- the pairs the bot trades (the notebook reads token_1, token_2 as T_USDT)
CREATE TABLE pairs (
    token_1       text NOT NULL,
    token_2       text NOT NULL,
    tf            text NOT NULL,
    wind          integer NOT NULL,
    spr_method    text NOT NULL,
    thresh_in     double precision NOT NULL,
    thresh_out    double precision NOT NULL,
    open_method   text NOT NULL,
    close_method  text NOT NULL,
    dist_in       double precision NOT NULL DEFAULT 0,
    dist_out      double precision NOT NULL DEFAULT 0,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    pred          double precision,
    run_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_1, token_2)
);

CREATE TABLE positions (
    id            bigserial PRIMARY KEY,
    token_1       text NOT NULL,
    token_2       text NOT NULL,
    pos_side      smallint NOT NULL CHECK (pos_side IN (1, 2)),
    status        text NOT NULL,                -- intent, open, closing, closed, failed
    qty_1         numeric,
    qty_2         numeric,
    open_price_1  numeric,
    open_price_2  numeric,
    open_z        double precision,
    opened_at     timestamptz,
    closed_at     timestamptz,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    mode          text NOT NULL DEFAULT 'paper',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX positions_active ON positions (token_1, token_2) WHERE status <> 'closed';

CREATE TABLE orders (
    id                 bigserial PRIMARY KEY,
    position_id        bigint REFERENCES positions (id),
    order_link_id      text NOT NULL UNIQUE CHECK (length(order_link_id) <= 36),
    exchange_order_id  text,
    symbol             text NOT NULL,
    side               text NOT NULL CHECK (side IN ('Buy', 'Sell')),
    qty                numeric NOT NULL,
    price              numeric,
    reduce_only        boolean NOT NULL DEFAULT false,
    status             text NOT NULL,
    filled_qty         numeric,
    avg_price          numeric,
    fee                numeric,
    error_code         integer,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_position ON orders (position_id);

CREATE TABLE trades (
    id             bigserial PRIMARY KEY,
    position_id    bigint REFERENCES positions (id),
    token_1        text NOT NULL,
    token_2        text NOT NULL,
    open_time      timestamptz NOT NULL,
    close_time     timestamptz NOT NULL,
    pos_side       smallint NOT NULL,
    qty_1          numeric NOT NULL,
    qty_2          numeric NOT NULL,
    open_price_1   numeric NOT NULL,
    close_price_1  numeric NOT NULL,
    open_price_2   numeric NOT NULL,
    close_price_2  numeric NOT NULL,
    fees           numeric NOT NULL,
    funding_1      numeric NOT NULL DEFAULT 0,
    funding_2      numeric NOT NULL DEFAULT 0,
    profit_1       numeric NOT NULL,
    profit_2       numeric NOT NULL,
    total_profit   numeric NOT NULL,
    reason         smallint NOT NULL,
    open_z         double precision,
    close_z        double precision,
    mode           text NOT NULL DEFAULT 'paper'
);
CREATE INDEX trades_pair_time ON trades (token_1, token_2, close_time);

CREATE TABLE backtest_runs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,                 -- sweep, stats, reselect, backtest
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running',
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text
);

CREATE TABLE sweep_results (
    run_id     bigint NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    token_1    text NOT NULL,
    token_2    text NOT NULL,
    param_id   integer NOT NULL,
    params     jsonb NOT NULL,
    trades     integer NOT NULL,
    pr         double precision,
    pr_rat     double precision,
    max_drdn   double precision,
    loss       double precision,
    avg_dur    double precision,
    metrics    jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, token_1, token_2, param_id)
);

CREATE TABLE selection_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'running',  -- running, ok, failed
    error         text,
    dry_run       boolean NOT NULL DEFAULT false,
    model_sha256  text,
    n_candidates  integer,
    n_selected    integer,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE selection_candidates (
    run_id    bigint NOT NULL REFERENCES selection_runs (id) ON DELETE CASCADE,
    token_1   text NOT NULL,
    token_2   text NOT NULL,
    stats     jsonb NOT NULL DEFAULT '{}'::jsonb,
    pred      double precision,
    decision  text NOT NULL,
    reason    text NOT NULL,
    PRIMARY KEY (run_id, token_1, token_2)
);

CREATE TABLE job_runs (
    id           bigserial PRIMARY KEY,
    job          text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running',  -- running, ok, failed, skipped
    error        text
);
CREATE INDEX job_runs_job_time ON job_runs (job, started_at DESC);
