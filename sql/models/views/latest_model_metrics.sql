-- The latest run's measured figures, one row per (component, head, protocol, metric).
with latest as (
    select run_id from {{ ref('latest_run') }}
),

final as (
    select model_metrics.*
    from {{ source('history', 'model_metrics') }}
    join latest using (run_id)
)

select * from final order by component, protocol, head, metric
