-- Per run: how much the law withheld.  Restricted gallery photos, blocked queries, and the
-- photos withheld from allowed queries' results (withheld_results: a restricted photo that
-- would have ranked above the last shown photo), with the share of queries that lost one.
with results as (
    select * from search_results
),

withheld as (
    select run_id, count(*) as withheld_photo_rows, count(distinct query_id) as queries_with_withheld
    from withheld_results
    group by run_id
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
        count(*) filter (where rank is not null)                        as shown_rows
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
        per_run.shown_rows,
        coalesce(withheld.withheld_photo_rows, 0)                        as withheld_photo_rows,
        round(coalesce(withheld.queries_with_withheld, 0)
              / nullif(per_run.queries - per_run.queries_blocked, 0), 3) as share_of_allowed_queries_with_withheld
    from per_run
    join runs using (run_id)
    left join photos using (run_id)
    left join withheld using (run_id)
)

select * from final
order by run_id desc;
