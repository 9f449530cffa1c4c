-- Per run: how much the law hid.  Restricted gallery photos, result rows showing the
-- disclaimer instead of a photo, blocked queries, and the share of ranked rows hidden.
with results as (
    select * from search_results
),

photos as (
    select run_id, count(*) filter (where restricted) as photos_restricted, count(*) as gallery_photos
    from photo_flags
    group by run_id
),

per_run as (
    select
        run_id,
        count(distinct query_id)                                        as queries,
        count(distinct query_id) filter (where rank is null)            as queries_blocked,
        count(*) filter (where rank is not null)                        as ranked_rows,
        count(*) filter (where rank is not null and not shown)          as hidden_photo_rows
    from results
    group by run_id
),

final as (
    select
        per_run.run_id,
        runs.head,
        photos.gallery_photos,
        photos.photos_restricted,
        per_run.queries,
        per_run.queries_blocked,
        per_run.hidden_photo_rows,
        round(per_run.hidden_photo_rows / nullif(per_run.ranked_rows, 0), 3)   as share_of_rows_hidden
    from per_run
    join runs using (run_id)
    left join photos using (run_id)
)

select * from final
order by run_id desc;
