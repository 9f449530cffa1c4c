-- Train photos that show a child, known from the captions people wrote about them.
-- They leave the relevance training data (the law forbids processing them) and they
-- label the photo guard, the one model allowed to learn from them, because it exists
-- to keep such photos out of results (docs/compliance.md).
--   own_caption:     the caption written for this photo describes a child;
--   matched_caption: a caption judges found matching this photo
--                    (target >= var match_target_threshold) describes a child,
--                    so the photo most likely shows one too.
with flags as (
    select * from {{ ref('stg_caption_flags') }} where flagged
),

own as (
    select
        captions.described_image    as image,
        'own_caption'               as reason,
        flags.rule,
        captions.caption_id
    from {{ ref('stg_captions') }} as captions
    join flags using (caption_id)
),

matched as (
    select
        targets.image,
        'matched_caption'           as reason,
        flags.rule,
        targets.caption_id
    from {{ ref('relevance_targets') }} as targets
    join flags using (caption_id)
    where targets.target >= {{ var('match_target_threshold') }} and not targets.is_own_description
),

train_photos as (
    select image from {{ ref('stg_photos') }} where split = 'train' and is_valid
),

final as (
    select
        '{{ run_id() }}'                           as run_id,
        image,
        arg_min(reason, reason = 'matched_caption')   as reason,
        arg_min(rule, reason = 'matched_caption')     as rule,
        arg_min(caption_id, reason = 'matched_caption') as caption_id
    from (select * from own union all select * from matched)
    where image in (select image from train_photos)
    group by image
)

select * from final order by image
