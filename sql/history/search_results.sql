-- Precomputed answers under the results contract: per run and saved query, the top-k gallery
-- photos that may be shown, ranked among themselves (restricted photos go to withheld_results).
create table if not exists search_results (
    run_id            varchar,
    query_id          varchar,
    query_text        varchar,
    rank              integer,  -- 1..k among the shown photos; null on a disclaimer-only row
    image             varchar,  -- the shown photo; null on a disclaimer-only row
    score             float,    -- fused score in (0, 1): what the ranking sorts by
    shown             boolean,  -- true for photo rows; false on a disclaimer-only row
    disclaimer        varchar,  -- the legal text on a disclaimer-only row, else null
    display           varchar,  -- what the user sees: the photo's name, the disclaimer or a refusal
    blocked_reason    varchar,
    model_score       float,    -- the relevance head's score in [0, 1]
    description_score float,    -- best cosine with the photo's descriptions; null when none
    channel           varchar,  -- 'model', 'descriptions', 'model (no descriptions)'
    model_rank        integer,  -- rank before the law removed restricted photos
    note              varchar   -- on a query's first row when photos were withheld
);
-- Warehouses created before the results contract gain its columns here.
alter table search_results add column if not exists model_score float;
alter table search_results add column if not exists description_score float;
alter table search_results add column if not exists channel varchar;
alter table search_results add column if not exists model_rank integer;
alter table search_results add column if not exists note varchar;
