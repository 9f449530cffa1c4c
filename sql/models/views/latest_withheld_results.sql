-- The photos withheld from the latest run's results, for compliance officers.
with latest as (
    select run_id from {{ ref('latest_run') }}
),

final as (
    select withheld_results.*
    from {{ source('history', 'withheld_results') }}
    join latest using (run_id)
)

select * from final order by query_id, model_rank
