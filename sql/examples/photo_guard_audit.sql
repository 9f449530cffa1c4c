-- The photo guard's decisions in the latest run: each restricted gallery photo, the signal
-- that decided (description, image classifier, face age, missing signal), the evidence, its
-- score against the threshold, and how many saved queries would have shown it
-- (withheld_results: the photo ranked above a query's last shown photo).
with latest as (
    select run_id from latest_run
),

flags as (
    select photo_flags.*
    from photo_flags
    join latest using (run_id)
),

appearances as (
    select image, count(*) as result_rows, min(model_rank) as best_rank
    from latest_withheld_results
    group by image
),

final as (
    select
        flags.image,
        flags.deciding_signal,
        flags.description_id,
        flags.description_rule,
        flags.n_faces,
        flags.youngest_age,
        round(flags.image_score, 4)                 as image_score,
        round(flags.image_threshold, 4)             as image_threshold,
        round(flags.score, 4)                       as score,
        round(flags.threshold, 4)                   as threshold,
        round(flags.score - flags.threshold, 4)     as margin,
        coalesce(appearances.result_rows, 0)        as result_rows_hidden,
        appearances.best_rank
    from flags
    left join appearances using (image)
    where flags.restricted
)

select * from final
order by result_rows_hidden desc, margin desc;
