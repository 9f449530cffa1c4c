-- The law: a result photo the photo guard restricts, or one it has no verdict on, is never
-- shown.  Fails with every shown result row (any published run, and the run being built).
select results.run_id, results.query_id, results.rank, results.image,
       coalesce(flags.restricted::varchar, 'no verdict') as verdict
from {{ source('history', 'search_results') }} as results
left join {{ source('history', 'photo_flags') }} as flags
    on flags.run_id = results.run_id and flags.image = results.image
where results.shown and results.image is not null and coalesce(flags.restricted, true)
