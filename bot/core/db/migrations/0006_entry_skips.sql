-- 0006: skipped entries per sizing reason (strategy.md section 3) of the train window,
-- summed over the pair's parameter sets: {"min_order_size": n, "min_qty": n, "min_notional": n}
ALTER TABLE pair_stats ADD COLUMN skips jsonb;
