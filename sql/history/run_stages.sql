-- Which stages of a run recomputed and which reused an earlier run's output, and why:
-- a stage's output is reused when its input fingerprint equals an earlier run's.
create table if not exists run_stages (
    run_id      varchar,
    stage       varchar,   -- photo_guard | relevance_heads | evaluate | rank
    fingerprint varchar,   -- hash of everything the stage's output depends on
    reused_from varchar    -- run_id whose output was reused; null when computed this run
)
