-- Every judged pair is either learned from or excluded with a reason, never both, never lost.
with kept as (select image, caption_id, 'kept' as side from {{ ref('training_pairs') }}),
excluded as (select image, caption_id, 'excluded' as side from {{ ref('training_exclusions') }}),
both_sides as (select * from kept union all select * from excluded),
per_pair as (
    select targets.image, targets.caption_id, count(both_sides.side) as n_sides
    from {{ ref('relevance_targets') }} as targets
    left join both_sides using (image, caption_id)
    group by all
),
strays as (
    select image, caption_id, -1 as n_sides from both_sides
    anti join {{ ref('relevance_targets') }} using (image, caption_id)
)

select * from per_pair where n_sides <> 1
union all
select * from strays
