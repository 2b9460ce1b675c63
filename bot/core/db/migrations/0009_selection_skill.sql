-- 0009: spread-shape statistics (zero crossings, half-life, Hurst), the robustness of a
-- sweep (share of profitable parameter sets) and the test window's fees
ALTER TABLE pair_stats ADD COLUMN zero_cross double precision;
ALTER TABLE pair_stats ADD COLUMN half_life_h double precision;
ALTER TABLE pair_stats ADD COLUMN hurst double precision;
ALTER TABLE pair_stats ADD COLUMN pos_share_all double precision;
ALTER TABLE pair_stats ADD COLUMN fees_test double precision;

ALTER TABLE model_dataset ADD COLUMN fees_test double precision;
