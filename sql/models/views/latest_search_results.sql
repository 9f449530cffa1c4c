-- What users see now: the latest run's results.  `display` is the photo or the disclaimer.
with latest as (
    select run_id from {{ ref('latest_run') }}
),

final as (
    select search_results.*
    from {{ source('history', 'search_results') }}
    join latest using (run_id)
)

select * from final order by query_id, rank nulls first
