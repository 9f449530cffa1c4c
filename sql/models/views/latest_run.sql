-- The most recent finished run (run ids sort by their UTC start time).
with finished as (
    select * from {{ source('history', 'runs') }} where finished_at is not null
),

final as (
    select * from finished order by run_id desc limit 1
)

select * from final
