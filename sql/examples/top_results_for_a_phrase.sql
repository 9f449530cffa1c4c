-- What users see now for the saved queries that contain a phrase: rank, photo or
-- disclaimer, score.  Edit the phrase; % matches anything.
set variable phrase = '%dog%';

with results as (
    select * from latest_search_results
),

matching as (
    select * from results
    where query_text ilike getvariable('phrase')
),

final as (
    select
        query_id,
        query_text,
        rank,
        display,
        round(score, 4)     as score,
        shown
    from matching
)

select * from final
order by query_id, rank nulls first
limit 50;
