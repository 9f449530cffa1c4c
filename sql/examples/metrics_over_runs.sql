-- The chosen head's headline figures run after run: did last night's reindex get better
-- or worse?  Agreement with experts and crowd (out of fold), retrieval on test queries.
with metrics as (
    select * from model_metrics
    where component = 'relevance'
),

runs as (
    select run_id, started_at, head, wall_seconds from runs
    where finished_at is not null
),

chosen as (
    select metrics.*
    from metrics
    join runs on runs.run_id = metrics.run_id and runs.head = metrics.head
),

final as (
    select
        runs.run_id,
        runs.started_at,
        runs.head,
        round(max(value) filter (where protocol = 'oof_grouped_by_photo' and metric = 'expert_kendall_tau_c'), 4)
                                                                            as expert_tau_c,
        round(max(value) filter (where protocol = 'oof_grouped_by_photo' and metric = 'crowd_kendall_tau_b'), 4)
                                                                            as crowd_tau_b,
        round(max(value) filter (where protocol = 'test_queries_filter_off' and metric = 'recall_at_1'), 4)
                                                                            as recall_at_1,
        round(max(value) filter (where protocol = 'test_queries_filter_off' and metric = 'recall_at_10'), 4)
                                                                            as recall_at_10,
        round(max(value) filter (where protocol = 'test_queries_filter_off' and metric = 'mrr'), 4)
                                                                            as mrr,
        round(runs.wall_seconds, 1)                                         as wall_seconds
    from runs
    left join chosen using (run_id)
    group by runs.run_id, runs.started_at, runs.head, runs.wall_seconds
)

select * from final
order by run_id desc;
