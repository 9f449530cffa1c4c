-- The compliance audit of the results contract: a restricted photo that would have ranked
-- above the last shown photo of an allowed saved query, and so was withheld.
create table if not exists withheld_results (
    run_id     varchar,
    query_id   varchar,
    query_text varchar,
    image      varchar,   -- the withheld gallery photo
    model_rank integer,   -- its place in the fused ranking before the law (1 = first)
    score      float,     -- its fused score
    reason     varchar    -- photo_flags' deciding signal, 'photo guard', or no verdict (fail-closed)
)
