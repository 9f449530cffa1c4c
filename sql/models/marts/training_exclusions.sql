-- Every judged pair removed from training, and why (one row per pair, first reason wins).
with targets as (
    select * from {{ ref('relevance_targets') }}
),

caption_flags as (
    select caption_id, rule from {{ ref('stg_caption_flags') }} where flagged
),

restricted as (
    select * from {{ ref('restricted_train_photos') }}
),

final as (
    select
        '{{ run_id() }}'                                   as run_id,
        targets.image,
        targets.caption_id,
        case
            when caption_flags.caption_id is not null then 'caption describes a child'
            else 'photo shows a child (' || restricted.reason || ')'
        end                                                     as reason,
        coalesce(caption_flags.rule, restricted.rule)           as rule
    from targets
    left join caption_flags using (caption_id)
    left join restricted using (image)
    where caption_flags.caption_id is not null or restricted.image is not null
)

select * from final order by image, caption_id
