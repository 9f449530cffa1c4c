-- Precomputed answers: per run and saved query, the top-k gallery photos.
create table if not exists search_results (
    run_id         varchar,
    query_id       varchar,
    query_text     varchar,
    rank           integer,  -- null on a blocked query's single row
    image          varchar,  -- kept for audit even when not shown; null for a blocked query
    score          float,    -- match score in [0, 1]
    shown          boolean,  -- false: the user sees the disclaimer instead
    disclaimer     varchar,  -- the legal text when not shown, else null
    display        varchar,  -- what the user sees: the photo's name or the disclaimer
    blocked_reason varchar
)
